import pytest

from edgeinfer.errors import EdgeInferError
from edgeinfer.profiles import all_profiles, load_profile, load_profile_file, profile_names

from conftest import edgeinfer_cli

REQUIRED = {"raspberry-pi-4", "raspberry-pi-5", "pixel-8", "galaxy-s24", "iphone-15-pro", "jetson-orin-nano",
            "coral-edgetpu", "generic-x86-64", "generic-arm64"}

GOOD = """name = "{name}"
display_name = "Test board"
[cpu]
arch = "arm64"
cores = 4
isa = ["neon"]
[memory]
ram_mb = 512
[formats]
preferred = ["onnx"]
[recipe]
default = ["int8"]
"""


def test_all_required_profiles_load_and_validate():
    assert REQUIRED <= set(profile_names())
    for p in all_profiles():
        assert p.preferred_formats and p.default_recipe
        assert p.data["cpu"]["cores"] > 0
        for acc in p.accelerators:
            assert acc["format"] in ("onnx", "tflite", "coreml")


def _write(tmp_path, text, name="board"):
    p = tmp_path / f"{name}.toml"
    p.write_text(text.format(name=name) if "{name}" in text else text)
    return p


def test_good_file_loads(tmp_path):
    assert load_profile_file(_write(tmp_path, GOOD)).name == "board"


@pytest.mark.parametrize("mutate, expect", [
    (lambda t: "colour = 'red'\n" + t, "unknown key colour"),
    (lambda t: t + "colour = 'red'\n", "unknown key recipe.colour"),
    (lambda t: t.replace("cores = 4", "cores = -1"), "cpu.cores = -1 is invalid"),
    (lambda t: t.replace('arch = "arm64"', 'arch = "sparc"'), "cpu.arch = 'sparc' is invalid"),
    (lambda t: t.replace('preferred = ["onnx"]', 'preferred = ["caffe"]'), "formats.preferred"),
    (lambda t: t.replace('default = ["int8"]', 'default = ["int3"]'), "recipe.default"),
    (lambda t: t.replace("ram_mb = 512", "ram_mb = 512\nswap_mb = 1"), "unknown key memory.swap_mb"),
    (lambda t: t + "[gpu]\nx = 1\n", "unknown section [gpu]"),
    (lambda t: t.replace("[memory]\nram_mb = 512\n", ""), "missing section [memory]"),
    (lambda t: t + '[[accelerators]]\nkind = "npu"\nname = "X"\ndtypes = ["int8"]\nformat = "tflite"\n', "accelerators[0].reach"),
    (lambda t: t + "name2 = [", "not valid TOML"),
])
def test_bad_files_name_file_and_key(tmp_path, mutate, expect):
    p = _write(tmp_path, mutate(GOOD.format(name="board")))
    with pytest.raises(EdgeInferError) as exc:
        load_profile_file(p)
    msg = str(exc.value)
    assert "board.toml" in msg and expect in msg and "\n" not in msg


def test_unknown_name_suggests_closest():
    with pytest.raises(EdgeInferError, match="did you mean raspberry-pi-4"):
        load_profile("raspberry-pi4")


def test_cli_lists_and_shows():
    out = edgeinfer_cli("profiles", check=True).stdout
    assert all(name in out for name in REQUIRED)
    show = edgeinfer_cli("profiles", "show", "coral-edgetpu", check=True).stdout
    assert "Edge TPU" in show and "edgetpu_compiler" in show
    bad = edgeinfer_cli("profiles", "show", "iphone15")
    assert bad.returncode == 2 and "did you mean iphone-15-pro" in bad.stderr and "Traceback" not in bad.stderr


def test_profile_delegates_and_providers_are_known_names():
    from edgeinfer.backends.litert_backend import BUILTIN_DELEGATES, delegate_candidates
    known_eps = {"CPUExecutionProvider", "XNNPACKExecutionProvider", "QNNExecutionProvider", "CUDAExecutionProvider",
                 "TensorrtExecutionProvider", "CoreMLExecutionProvider", "NnapiExecutionProvider"}
    for p in all_profiles():
        for d in p.runtime.get("tflite_delegates", []):
            assert d in BUILTIN_DELEGATES or delegate_candidates(d, "linux"), (p.name, d)
        assert set(p.runtime.get("onnx_providers", [])) <= known_eps, p.name
