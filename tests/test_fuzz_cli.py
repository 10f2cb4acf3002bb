"""Fuzz the CLI with mutated ONNX files, TFLite files, manifests, labels files and images.

Every input runs through ``edgeinfer`` in its own child process (``cli_forkserver.py`` forks one per
input from a process that has already imported the CLI, so an input costs ~0.1 s instead of ~1 s of
Python start-up; a sample also runs as a plain ``python -m edgeinfer.cli`` subprocess and must end
the same way). Each must end in exit 0, or exit 2 with one ``error:`` line: no traceback, no hang
(timeout), no crash (signal), no file written or removed, nothing left in its TMPDIR.

Seeds are fixed (``random.Random("<kind>-<index>")``): a failure names its kind and index.
Budget: ``FULL`` inputs per kind (1,000 in all) in the slow test, ``QUICK`` per kind by default.
"""
from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fuzz_helpers as fz
from conftest import DIGITS, ROOT

FULL = {"onnx": 220, "tflite": 260, "manifest": 200, "labels": 120, "image": 200}   # 1,000
QUICK = {k: 8 for k in FULL}
TIMEOUT = 60      # seconds per input; a hang is a finding
NOISE = re.compile(r"^(INFO: |warning: |\S.* \[[#-]+\] +\d+/\d+ )")   # LiteRT's banner, warnings, progress bars


class ForkServer:
    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("cli_forkserver.py"))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)

    def run(self, argv: list[str], cwd: Path, tmp: Path) -> dict:
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "tmp": str(tmp), "timeout": TIMEOUT}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def mixed_bundle(digits_bundle, digits_tflite_bundle, tmp_path_factory) -> Path:
    """One bundle with ONNX int8/fp32 and TFLite int8/fp32 artifacts."""
    b = tmp_path_factory.mktemp("fuzz-base") / "bundle"
    shutil.copytree(digits_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    t = json.loads((digits_tflite_bundle / "manifest.json").read_text())
    for a in t["artifacts"]:
        shutil.copy(digits_tflite_bundle / a["file"], b / a["file"])
        m["artifacts"].append(a)
    (b / "manifest.json").write_text(json.dumps(m, indent=2))
    return b


def snapshot(folder: Path) -> set:
    return {(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def make_case(kind: str, i: int, base: Path, case: Path) -> tuple[list[str], str]:
    """Write case ``i`` of ``kind`` under ``case`` (a bundle copy + inputs); return (argv, description)."""
    rng = random.Random(f"{kind}-{i}")
    bundle = case / "bundle"
    shutil.copytree(base, bundle)
    img = case / "seven.png"
    shutil.copy(DIGITS / "images" / "seven_0.png", img)
    data = case / "data"
    for label, name in (("7", "seven_0.png"), ("2", "two_1.png")):
        (data / label).mkdir(parents=True)
        shutil.copy(DIGITS / "images" / name, data / label / name)
    run = ["run", "bundle", "seven.png"]
    if kind == "onnx":
        name = rng.choice(("digits-fp32.onnx", "digits-int8.onnx"))
        mutated, what = fz.onnx_mutation((base / name).read_bytes(), rng)
        (bundle / name).write_bytes(mutated)
        argv = [["inspect", f"bundle/{name}"], run + ["--artifact", name, "--no-verify-hash"],
                run + ["--artifact", name]][i % 3]
    elif kind == "tflite":
        name = rng.choice(("digits-fp32.tflite", "digits-int8.tflite"))
        mutated, what = fz.tflite_mutation((base / name).read_bytes(), rng)
        (bundle / name).write_bytes(mutated)
        argv = [run + ["--artifact", name, "--no-verify-hash"]] * 3 + [run + ["--artifact", name], ["inspect", f"bundle/{name}"]]
        argv = argv[i % 5]
    elif kind == "manifest":
        mutated, what = fz.manifest_mutation((base / "manifest.json").read_bytes(), rng)
        (bundle / "manifest.json").write_bytes(mutated)
        argv = [run, run + ["--artifact", "digits-int8.tflite"], ["inspect", "bundle"], ["eval", "bundle", "data"]][i % 4]
    elif kind == "labels":
        mutated, what = fz.labels_mutation((base / "labels.txt").read_bytes(), rng)
        (bundle / "labels.txt").write_bytes(mutated)
        argv = [run + ["--top-k", "3"], ["eval", "bundle", "data"], run + ["--json"]][i % 3]
    else:
        images = {p.name: p.read_bytes() for p in sorted((DIGITS / "images").glob("*.png"))[:4]}
        mutated, what = fz.image_mutation(images, rng)
        suffix = rng.choice((".png", ".jpg", ".bmp", ".gif", ".webp", ".tif"))
        (case / f"input{suffix}").write_bytes(mutated)
        argv = ["run", "bundle", f"input{suffix}"] + (["--artifact", "digits-int8.tflite"] if i % 2 else [])
    return argv, what


def check(kind: str, i: int, what: str, res: dict, before: set, case: Path, tmp: Path) -> str:
    """The outcome ("accepted" | "clean error"); an AssertionError naming the case otherwise."""
    where = f"{kind} #{i} ({what})"
    assert not res["timeout"], f"{where}: hang (killed after {TIMEOUT} s)"
    assert res["returncode"] >= 0, f"{where}: crashed with signal {-res['returncode']}\n{res['stderr'][-2000:]}"
    assert "Traceback" not in res["stderr"], f"{where}: traceback\n{res['stderr'][-3000:]}"
    assert res["returncode"] in (0, 2), f"{where}: exit {res['returncode']}\n{res['stderr'][-2000:]}"
    if res["returncode"] == 2:
        lines = [ln for ln in res["stderr"].splitlines() if ln.strip() and not NOISE.match(ln)]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{where}: not one error line:\n{res['stderr'][-2000:]}"
    assert snapshot(case) == before, f"{where}: files written or removed: {snapshot(case) ^ before}"
    assert not any(tmp.iterdir()), f"{where}: left behind in TMPDIR: {list(tmp.iterdir())}"
    return "accepted" if res["returncode"] == 0 else "clean error"


def fuzz(budget: dict[str, int], base: Path, root: Path) -> dict[str, collections.Counter]:
    server = ForkServer()
    outcomes: dict[str, collections.Counter] = {k: collections.Counter() for k in budget}
    try:
        for kind, n in budget.items():
            for i in range(n):
                case, tmp = root / f"{kind}-{i}", root / f"{kind}-{i}-tmp"
                case.mkdir()
                tmp.mkdir()
                argv, what = make_case(kind, i, base, case)
                before = snapshot(case)
                res = server.run(argv, case, tmp)
                outcomes[kind][check(kind, i, what, res, before, case, tmp)] += 1
                shutil.rmtree(case)
                tmp.rmdir()
    finally:
        server.close()
    return outcomes


def report(outcomes: dict[str, collections.Counter]) -> str:
    return "; ".join(f"{k}: {sum(c.values())} tried, {c['clean error']} clean errors, {c['accepted']} accepted"
                     for k, c in outcomes.items())


def test_fuzz_quick(mixed_bundle, tmp_path):
    outcomes = fuzz(QUICK, mixed_bundle, tmp_path)
    print(report(outcomes))
    assert all(sum(c.values()) == QUICK[k] for k, c in outcomes.items())


@pytest.mark.slow
def test_fuzz_1000_inputs(mixed_bundle, tmp_path):
    outcomes = fuzz(FULL, mixed_bundle, tmp_path)
    print(report(outcomes))
    assert sum(sum(c.values()) for c in outcomes.values()) >= 1000
    for kind, c in outcomes.items():   # the mutators reach both outcomes (else they test nothing)
        assert c["clean error"] > 0, (kind, c)


def test_forked_runs_end_like_plain_subprocesses(mixed_bundle, tmp_path):
    """The fork server is faithful: a sample of cases ends the same way as `python -m edgeinfer.cli`."""
    server = ForkServer()
    try:
        for kind in FULL:
            for i in (1, 2):
                case, tmp = tmp_path / f"{kind}-{i}", tmp_path / f"{kind}-{i}-tmp"
                case.mkdir()
                tmp.mkdir()
                argv, what = make_case(kind, i, mixed_bundle, case)
                forked = server.run(argv, case, tmp)
                plain = subprocess.run([sys.executable, "-m", "edgeinfer.cli", *argv], capture_output=True, text=True,
                                       cwd=case, env=dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(tmp)), timeout=TIMEOUT)
                assert forked["returncode"] == plain.returncode, (kind, i, what, forked["stderr"], plain.stderr)
                assert forked["stdout"] == plain.stdout, (kind, i, what)
    finally:
        server.close()
