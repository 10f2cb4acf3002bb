"""Sharing a ``Predictor`` across threads: one lock per engine vs one engine per thread, side by side.

    PYTHONPATH=$PWD python tools/bench_threads.py [--bundle B ...] [--threads 4] [--images 64]

For each artifact: the time for ``--threads`` threads to predict ``--images`` images each, (a) all
sharing one ``Predictor`` with its engine calls serialised by a lock (decoding and pre/postprocessing
in parallel), (b) sharing one without the lock (only for engines that are thread-safe: ONNX
Runtime), (c) each thread with its own ``Predictor`` (an interpreter / session per thread), and
(d) one thread doing all the work alone; plus the memory each extra engine costs. Timings are
interleaved medians (tools/timing.py) so machine load hits all alike.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import DIGITS, _status_kb, sample_bundles  # noqa: E402
from timing import interleaved_medians_ms  # noqa: E402


def run_threads(preds, images) -> None:
    threads = [threading.Thread(target=lambda p=p: p.predict(images)) for p in preds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", action="append", type=Path)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--images", type=int, default=32, help="images per thread")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--image-dir", type=Path, default=DIGITS / "images", help="photos to predict (*.png, *.jpg, ...)")
    args = ap.parse_args()
    from edgeinfer import Predictor
    work = Path(tempfile.mkdtemp(prefix="threads-"))
    try:
        bundles = args.bundle or sample_bundles(work)
        photos = sorted(p for p in args.image_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".jpeg"))
        images = [photos[i % len(photos)] for i in range(args.images)]
        print(f"{args.threads} threads x {args.images} images, batch 1 per call; ms = interleaved median of {args.reps}")
        print(f"{'artifact':<26} {'shared+lock':>12} {'shared,free':>12} {'per-thread':>11} {'one thread':>11} "
              f"{'RSS/extra engine':>17}")
        for b in bundles:
            for a in json.loads((b / "manifest.json").read_text())["artifacts"]:
                if a["format"] == "coreml":
                    continue
                locked = Predictor(b, artifact=a["file"], batch=1)
                locked._lock = threading.Lock()                  # force the lock even for thread-safe engines
                free = Predictor(b, artifact=a["file"], batch=1) if locked.backend.thread_safe else None
                if free is not None:
                    free._lock = contextlib.nullcontext()
                rss1 = _status_kb("VmRSS")
                own = [Predictor(b, artifact=a["file"], batch=1) for _ in range(args.threads)]
                rss2 = _status_kb("VmRSS")
                fns = {"locked": lambda: run_threads([locked] * args.threads, images),
                       "own": lambda: run_threads(own, images),
                       "alone": lambda: locked.predict(images * args.threads)}
                if free is not None:
                    fns["free"] = lambda: run_threads([free] * args.threads, images)
                t = interleaved_medians_ms(fns, reps=args.reps, warmup=1)
                free_ms = f"{t['free']:>10.0f}ms" if "free" in t else f"{'(unsafe)':>12}"
                print(f"{a['file']:<26} {t['locked']:>10.0f}ms {free_ms} {t['own']:>9.0f}ms {t['alone']:>9.0f}ms "
                      f"{(rss2 - rss1) / 1024 / args.threads:>15.1f}MB")
                del locked, free, own
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
