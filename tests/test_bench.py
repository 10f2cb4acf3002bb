"""`edgeinfer bench`: per-stage percentiles, load time, peak RSS, ORT slowest ops, PNG chart; bad input."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from PIL import Image

from conftest import ROOT, edgeinfer_cli
from test_runtime_light import CONVERTER_DEPS, blocker


def test_bench_json_and_plot(digits_bundle, tmp_path):
    png = tmp_path / "bench.png"
    r = edgeinfer_cli("bench", digits_bundle, "--runs", "4", "--warmup", "1", "--threads", "1", "--json", "--plot", png)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    files = [a["artifact"] for a in rep["artifacts"]]
    assert files == ["digits-int8.onnx", "digits-fp32.onnx"]
    for a in rep["artifacts"]:
        assert a["runs"] == 4 and a["load_s"] > 0 and a["peak_rss_mb"] > 10
        for stage in ("preprocess_ms", "engine_ms", "postprocess_ms", "total_ms"):
            s = a[stage]
            assert 0 <= s["p50"] <= s["p90"] <= s["p99"]
        assert a["total_ms"]["p50"] >= a["engine_ms"]["p50"]
        assert a["ops"] and {"op", "node", "median_ms", "share"} <= set(a["ops"][0])
        assert sum(o["share"] for o in a["ops"]) <= 1.0 + 1e-9
    assert any(o["op"] in ("QLinearConv", "Conv", "ConvInteger") for o in rep["artifacts"][0]["ops"])
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width >= 800


def test_bench_table_one_artifact(digits_bundle):
    r = edgeinfer_cli("bench", digits_bundle, "--artifact", "digits-fp32.onnx", "--runs", "2", "--warmup", "0", "--no-ops")
    assert r.returncode == 0, r.stderr
    assert "digits-fp32.onnx" in r.stdout and "digits-int8.onnx" not in r.stdout and "engine p50" in r.stdout
    assert "slowest ops" not in r.stdout


def test_bench_bad_input(digits_bundle, tmp_path):
    for args, fragment in (((digits_bundle, "--artifact", "nope.onnx"), "digits-int8.onnx"),
                           ((digits_bundle, "--plot", tmp_path / "chart.jpg"), ".png"),
                           ((digits_bundle, "--plot", tmp_path / "missing" / "c.png"), "does not exist"),
                           ((tmp_path, "--runs", "2"), "manifest"),
                           ((digits_bundle, "--runs", "0"), "--runs")):
        r = edgeinfer_cli("bench", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert fragment in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bench_needs_no_converter(digits_bundle):
    script = blocker(CONVERTER_DEPS) + textwrap.dedent(f"""
        from edgeinfer.bench import bench_bundle
        rep = bench_bundle({str(digits_bundle)!r}, runs=2, warmup=0, progress=False)
        assert len(rep["artifacts"]) == 2
        heavy = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        assert not heavy, heavy
        print("BENCH-LIGHT-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT / "tests")
    assert proc.returncode == 0 and "BENCH-LIGHT-OK" in proc.stdout, proc.stderr
