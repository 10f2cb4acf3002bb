"""Sharing a ``Predictor`` across threads: one lock per engine vs one engine per thread, side by side.

    PYTHONPATH=$PWD python tools/bench_threads.py [--bundle B ...] [--threads 4] [--images 64]

For each artifact: the time for ``--threads`` threads to predict ``--images`` images each, (a) all
sharing one ``Predictor`` (its engine calls serialised by the Predictor's lock; decoding and
pre/postprocessing run in parallel), (b) each thread with its own ``Predictor`` (an interpreter /
session per thread, no lock), and (c) one thread doing all the work alone; plus the RSS each way
costs. Timings are interleaved medians (tools/timing.py) so machine load hits all alike.
"""
from __future__ import annotations

import argparse
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
    args = ap.parse_args()
    from edgeinfer import Predictor
    work = Path(tempfile.mkdtemp(prefix="threads-"))
    try:
        bundles = args.bundle or sample_bundles(work)
        photos = sorted((DIGITS / "images").glob("*.png"))
        images = [photos[i % len(photos)] for i in range(args.images)]
        print(f"{args.threads} threads x {args.images} images, batch 1 per call; ms = interleaved median of {args.reps}")
        print(f"{'artifact':<22} {'shared+lock':>12} {'per-thread':>11} {'one thread':>11} {'lock/per-thread':>16} "
              f"{'RSS shared':>11} {'RSS per-thread':>15}")
        for b in bundles:
            for a in json.loads((b / "manifest.json").read_text())["artifacts"]:
                if a["format"] == "coreml":
                    continue
                rss0 = _status_kb("VmRSS")
                shared = Predictor(b, artifact=a["file"], batch=1)
                rss1 = _status_kb("VmRSS")
                own = [Predictor(b, artifact=a["file"], batch=1) for _ in range(args.threads)]
                rss2 = _status_kb("VmRSS")
                t = interleaved_medians_ms({
                    "shared": lambda: run_threads([shared] * args.threads, images),
                    "own": lambda: run_threads(own, images),
                    "alone": lambda: shared.predict(images * args.threads),
                }, reps=args.reps, warmup=1)
                print(f"{a['file']:<22} {t['shared']:>10.0f}ms {t['own']:>9.0f}ms {t['alone']:>9.0f}ms "
                      f"{t['shared'] / t['own']:>15.2f}x {(rss1 - rss0) / 1024:>9.1f}MB {(rss2 - rss1) / 1024:>13.1f}MB")
                del shared, own
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
