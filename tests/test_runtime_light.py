"""The runtime wing runs a bundle with only numpy, pillow, click and one engine importable."""
import subprocess
import sys
import textwrap
import venv

import pytest

from conftest import DIGITS, ROOT, edgeinfer_cli

CONVERTER_DEPS = ("onnx", "coremltools", "converters", "flatbuffers", "tensorflow", "torch", "sklearn", "scipy")


def blocker(blocked: tuple[str, ...]) -> str:
    """Python source that makes importing any of ``blocked`` fail, as if not installed."""
    return f"import sys, importlib.abc\nBLOCKED = {blocked!r}\n" + textwrap.dedent("""
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"blocked: {name}", name=name)
    sys.meta_path.insert(0, Block())
    """)


BLOCKER = blocker(CONVERTER_DEPS + ("ai_edge_litert", "tflite_runtime"))


def test_runtime_runs_without_converter_dependencies(digits_bundle):
    script = BLOCKER + textwrap.dedent(f"""
        import edgeinfer
        pred = edgeinfer.Predictor({str(digits_bundle)!r})
        res = pred.predict([{str(DIGITS / 'images' / 'seven_0.png')!r}])
        assert res[0].labels[0] == "7", res
        from edgeinfer.cli import main
        sys.argv = ["edgeinfer", "run", {str(digits_bundle)!r}, {str(DIGITS / 'images' / 'two_1.png')!r}]
        try:
            main()
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        heavy = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        assert not heavy, heavy
        print("LIGHT-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT / "tests")
    assert proc.returncode == 0, proc.stderr
    assert "LIGHT-OK" in proc.stdout and "two_1.png" in proc.stdout


def test_tflite_only_runtime(tmp_path):
    """Only ai-edge-litert as engine: onnxruntime blocked too."""
    args = ["convert", DIGITS / "digits.onnx", "--profile", "raspberry-pi-4", "--formats", "tflite",
                          "--quant", "int8", "--calib", DIGITS / "calib", "-o", tmp_path, "--quiet"]
    edgeinfer_cli(*args, check=True)
    bundle = tmp_path / "digits-raspberry-pi-4"
    script = blocker(CONVERTER_DEPS + ("onnxruntime",)) + textwrap.dedent(f"""
        import edgeinfer
        pred = edgeinfer.Predictor({str(bundle)!r})
        assert pred.artifact["format"] == "tflite"
        res = pred.predict([{str(DIGITS / 'images' / 'five_4.png')!r}, {str(DIGITS / 'images' / 'zero_2.png')!r}])
        assert [r.labels[0] for r in res] == ["5", "0"], res
        heavy = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
        assert not heavy, heavy
        print("TFLITE-LIGHT-OK")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT / "tests")
    assert proc.returncode == 0, proc.stderr
    assert "TFLITE-LIGHT-OK" in proc.stdout


def test_convert_without_converter_deps_says_what_to_install(tmp_path):
    script = BLOCKER + textwrap.dedent(f"""
        from edgeinfer.cli import main
        sys.argv = ["edgeinfer", "convert", {str(DIGITS / 'digits.onnx')!r}, "--profile", "generic-x86-64", "-o", {str(tmp_path)!r}]
        main()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT / "tests")
    assert proc.returncode == 2 and "pip install 'edgeinfer[convert]'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_wheel_in_fresh_venv_lists_profiles_and_runs_a_bundle(tmp_path, digits_bundle):
    """A NON-editable install of the wheel with only the onnx extra: profiles ship inside it."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheel_dir), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(wheel_dir.glob("edgeinfer-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", f"{wheel}[onnx]"], check=True, capture_output=True)
    exe = env_dir / "bin" / "edgeinfer"
    out = subprocess.run([str(exe), "profiles"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "raspberry-pi-4" in out.stdout, out.stderr
    run = subprocess.run([str(exe), "run", str(digits_bundle), str(DIGITS / "images" / "nine_5.png")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and "9" in run.stdout.splitlines()[2], run.stderr
    missing = subprocess.run([str(py), "-c", "import onnx"], capture_output=True)
    assert missing.returncode != 0, "the onnx extra must not pull the converter's onnx package"
