"""What integrity-on-open costs: size + sha256 of an artifact before an engine opens it.

    PYTHONPATH=$PWD python tools/bench_hash.py [FILE]     # default /work/realdata/mobilenet_v2.onnx, else 14 MB of random bytes

Prints, side by side (medians of ``--reps``): the hash with the file dropped from the page cache
(``posix_fadvise DONTNEED``: a first open after boot or copy), the hash with the file in the page
cache (a first open in this process), the cached path (``cached_sha256`` when size, mtime and
ctime are unchanged: a stat), and for scale the engine's own load of the same file when it is ONNX.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from edgeinfer import bundle

DEFAULT = Path("/work/realdata/mobilenet_v2.onnx")


def drop_from_page_cache(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno()) if os.access(path, os.W_OK) else None
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def median_ms(fn, reps: int, before=None) -> float:
    times = []
    for _ in range(reps):
        if before:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", nargs="?", type=Path)
    ap.add_argument("--reps", type=int, default=9)
    args = ap.parse_args()
    path = args.file or (DEFAULT if DEFAULT.is_file() else None)
    tmp = None
    if path is None:
        tmp = Path(tempfile.mkdtemp()) / "random-14MB.bin"
        tmp.write_bytes(os.urandom(14 * 1024 * 1024))
        path = tmp
    size = path.stat().st_size

    def clear_cache():
        bundle._DIGESTS.clear()
    cold = median_ms(lambda: bundle.cached_sha256(path), args.reps, lambda: (clear_cache(), drop_from_page_cache(path)))
    warm = median_ms(lambda: bundle.cached_sha256(path), args.reps, clear_cache)
    bundle.cached_sha256(path)
    cached = median_ms(lambda: bundle.cached_sha256(path), args.reps * 10)
    print(f"{path.name}: {size / 1e6:.1f} MB")
    print(f"  sha256, file not in page cache : {cold:8.2f} ms")
    print(f"  sha256, file in page cache     : {warm:8.2f} ms  ({size / 1e6 / (warm / 1e3):.0f} MB/s)")
    print(f"  cached (stat key unchanged)    : {cached:8.3f} ms  ({warm / cached:.0f}x less)")
    if path.suffix == ".onnx":
        try:
            import onnxruntime as ort
            load = median_ms(lambda: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), max(3, args.reps // 3))
            print(f"  for scale, ORT session load    : {load:8.2f} ms  (hash = {warm / load:.0%} of it)")
        except ImportError:
            pass
    if tmp:
        tmp.unlink()
        tmp.parent.rmdir()


if __name__ == "__main__":
    main()
