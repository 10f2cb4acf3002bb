"""`make avx2-test`: the test suite as an x86-64 CPU without VNNI runs it, on a host that has VNNI.

    python tools/avx2_test.py [--all | --ci] [PYTEST ARGS...]

ONNX Runtime's int8 kernels compute differently by instruction set (``edgeinfer.int8_arith``: x86
without VNNI saturates 16-bit pair sums), so a suite that is green on a VNNI host can fail on an
AVX2-only one, and CI runs on whichever the session had. This runs pytest under QEMU user mode with
a Haswell CPU (AVX2 and FMA, no AVX-512, no VNNI): ONNX Runtime's MLAS, LiteRT's XNNPACK and numpy
choose their code paths from CPUID, so they run the AVX2 kernels such a host runs. ``-L`` puts a
``/proc/cpuinfo`` without the VNNI / AVX-512 flags in front of the host's, so edgeinfer's own host
detection agrees, and ``sys.executable`` is a shim that re-enters QEMU, so the CLI tests' child
processes run on the same CPU. The tool first checks that the emulated ONNX Runtime saturates
(``MatMulInteger`` of 255 x 127 pairs) and that edgeinfer detects ``x86-avx2``.

numpy's own AVX2 code (``X86_V3``) is switched off under emulation: QEMU 7.2's TCG computes its
int64 ``argsort`` wrong (a permutation's argsort is not its inverse; measured with Debian's
qemu-user-static 7.2.22 and numpy 2.4), which GPTQ uses. numpy's SIMD level does not change what
this run checks (the int8 engines' kernels).

Emulation is 5-15x slower than the host and says nothing about speed. Default test set: the files
whose figures depend on int8 kernels (``INT8_TESTS``); ``--all`` runs the whole suite (about an hour
on 2 cores); ``--ci`` (what ``make test`` runs, ~5 min) the host-arithmetic tests and the four that once
failed on AVX2-only hosts only (``CI_TESTS``). Exit: pytest's; 0 with one ``SKIP`` line when there is nothing to emulate (not x86-64,
or this host has no VNNI itself: ``make test`` already runs as such a CPU), no QEMU, or a QEMU that
does not compute as such a CPU (the checks above), unless ``EDGEINFER_AVX2_TEST=require``.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeinfer import int8_arith  # noqa: E402

QEMU = "qemu-x86_64-static"
CPU = "Haswell-noTSX"
HIDDEN_FLAGS = re.compile(r"^(avx512.*|avx_vnni.*|amx.*|vaes|vpclmulqdq|gfni|sha_ni)$")
NUMPY_ENV = {"NPY_DISABLE_CPU_FEATURES": "X86_V3"}
INT8_TESTS = ("tests/test_int8_arith.py", "tests/test_convert_cli.py", "tests/test_quantize_onnx.py",
              "tests/test_coreml_fp32_islands.py", "tests/test_coreml_int8_weights.py", "tests/test_tflite_int8.py",
              "tests/test_sensitivity.py", "tests/test_float_regions.py", "tests/test_int8_error.py",
              "tests/test_int8_fallback.py", "tests/test_detect_cli.py", "tests/test_real_photos.py")
CI_TESTS = ("tests/test_int8_arith.py", "tests/test_avx2_tool.py",
            "tests/test_convert_cli.py::test_bundle_manifest_records_the_contract",
            "tests/test_convert_cli.py::test_predictor_runs_batches_and_names_labels",
            "tests/test_convert_cli.py::test_pruned_int8_verifies_for_every_emitter",
            "tests/test_coreml_fp32_islands.py::test_digits_fp32_stem_islands_reduce_logit_error")
CHECK = """
import numpy as np, onnxruntime as ort
from onnx import helper, numpy_helper, TensorProto
from edgeinfer.int8_arith import host_int8_kernels
g = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "g",
    [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 64])],
    [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 4])],
    [numpy_helper.from_array(np.full((64, 4), 127, np.int8), "b")])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
y = int(s.run(None, {"a": np.full((1, 64), 255, np.uint8)})[0][0, 0])
p = np.random.default_rng(0).permutation(257)
print(host_int8_kernels(), y == 32 * 32767, bool((p[np.argsort(p)] == np.arange(257)).all()))
"""


def masked_cpuinfo(text: str) -> str:
    """``/proc/cpuinfo`` text without the flags of instruction sets a Haswell lacks (VNNI, AVX-512, AMX, ...)."""
    def mask(line: str) -> str:
        key, sep, value = line.partition(":")
        if key.strip() != "flags" or not sep:
            return line
        return f"{key}: " + " ".join(f for f in value.split() if not HIDDEN_FLAGS.match(f))
    return "\n".join(mask(line) for line in text.splitlines()) + "\n"


def unsupported_features(stderr: str) -> list[str]:
    """Feature names QEMU warns its TCG cannot give the requested CPU (each warning would reach the tests' stderr)."""
    return sorted(set(re.findall(r"TCG doesn't support requested feature: \S+?\.([\w-]+) \[bit", stderr)))


def make_shim(work: Path, qemu: str) -> tuple[Path, str]:
    """(``work/bin/python``, the ``-cpu`` it uses): this Python under QEMU's Haswell, reading
    ``work/root/proc/cpuinfo``; a venv shim (pyvenv.cfg + lib) so ``sys.executable`` and ``sys.prefix``
    stay the shim's."""
    (work / "root" / "proc").mkdir(parents=True)
    (work / "root" / "proc" / "cpuinfo").write_text(masked_cpuinfo(Path("/proc/cpuinfo").read_text(errors="replace")))
    (work / "bin").mkdir()
    real = os.path.realpath(sys.executable)
    if sys.prefix != sys.base_prefix:
        shutil.copy(Path(sys.prefix) / "pyvenv.cfg", work / "pyvenv.cfg")
        for lib in ("lib", "lib64"):
            if (Path(sys.prefix) / lib).exists():
                (work / lib).symlink_to(Path(sys.prefix) / lib)
    else:
        (work / "pyvenv.cfg").write_text(f"home = {Path(real).parent}\ninclude-system-site-packages = true\n")
    shim = work / "bin" / "python"
    cpu = CPU
    for _ in range(4):     # drop the features this QEMU warns about, until it runs silently
        args = " ".join(shlex.quote(str(a)) for a in (qemu, "-cpu", cpu, "-L", work / "root", "-0", shim, real))
        shim.write_text(f'#!/bin/sh\nexec {args} "$@"\n')
        shim.chmod(0o755)
        r = subprocess.run([str(shim), "-c", "pass"], capture_output=True, text=True)
        missing = unsupported_features(r.stderr)
        if not missing:
            break
        cpu += "".join(f",-{f}" for f in missing)
    if r.returncode != 0 or r.stderr.strip():
        raise RuntimeError(f"{qemu} -cpu {cpu} does not run Python silently: {r.stderr.strip()[-300:]}")
    return shim, cpu


def skip(why: str) -> int:
    if os.environ.get("EDGEINFER_AVX2_TEST") == "require":
        print(f"avx2-test: FAILED: {why} (EDGEINFER_AVX2_TEST=require)", flush=True)
        return 1
    print(f"SKIP avx2-test: {why}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true", help="the whole suite (default: the int8-sensitive files)")
    which.add_argument("--ci", action="store_true", help="the few tests `make test` runs this way")
    args, pytest_args = ap.parse_known_args(argv)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return skip(f"this host is {platform.machine()}, not x86-64")
    if int8_arith._detect() == "x86-avx2":
        return skip("this host has no VNNI: `make test` already runs the suite as such a CPU does")
    qemu = shutil.which(QEMU)
    if qemu is None:
        from converters import arm_userland
        why = arm_userland.install_tools({QEMU: "qemu-user-static"})
        qemu = shutil.which(QEMU)
        if qemu is None:
            return skip(why or f"{QEMU} not found: `sudo apt-get install qemu-user-static`")
    with tempfile.TemporaryDirectory(prefix="edgeinfer-avx2-") as tmp:
        try:
            shim, cpu = make_shim(Path(tmp), qemu)
        except RuntimeError as e:
            return skip(str(e))
        env = {**os.environ, **NUMPY_ENV}
        env.pop(int8_arith.ENV_OVERRIDE, None)
        r = subprocess.run([str(shim), "-c", CHECK], capture_output=True, text=True, env=env, cwd=ROOT)
        got = r.stdout.split()
        if r.returncode != 0 or got != ["x86-avx2", "True", "True"]:   # this QEMU is not a faithful AVX2 host
            return skip(f"the emulated CPU does not compute as an AVX2-only x86 (detected kernels, ORT saturates, "
                        f"numpy argsort right: {' '.join(got) or r.stderr.strip()[-300:]})")
        print(f"avx2-test: {QEMU} -cpu {cpu}: edgeinfer detects x86-avx2, ONNX Runtime saturates 16-bit pair sums",
              flush=True)
        tests = (["tests"] if args.all else [] if any(not a.startswith("-") for a in pytest_args) else
                 list(CI_TESTS) if args.ci else [t for t in INT8_TESTS if (ROOT / t).exists()])
        cmd = [str(shim), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow", *tests, *pytest_args]
        return subprocess.run(cmd, env=env, cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main())
