"""Device profiles: one TOML file per device, validated against a schema on load.

Unknown keys and bad values are rejected with the file and the key named.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .backends.names import DELEGATE_NAMES, ORT_PROVIDERS
from .errors import EdgeInferError
from .int8_arith import KERNELS as INT8_KERNELS

FORMATS = ("onnx", "tflite", "coreml")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
ARCHES = ("arm64", "armv7", "x86_64")
ACCEL_KINDS = ("cpu", "gpu", "npu", "dsp", "tpu")
COMPUTE_UNITS = ("ALL", "CPU_AND_NE", "CPU_AND_GPU", "CPU_ONLY")
COREML_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")


def _str(v): return isinstance(v, str) and v.strip() != ""
def _pos_int(v): return isinstance(v, int) and not isinstance(v, bool) and v > 0
def _str_list(v): return isinstance(v, list) and all(_str(x) for x in v)
def _one_of(*choices): return lambda v: v in choices
def _list_of(*choices): return lambda v: isinstance(v, list) and len(v) > 0 and all(x in choices for x in v)


Check = tuple[Callable[[Any], bool], str, bool]  # (validator, expectation, required)

SCHEMA: dict[str, dict[str, Check]] = {
    "": {
        "name": (_str, "a non-empty string", True),
        "display_name": (_str, "a non-empty string", True),
        "description": (_str, "a non-empty string", False),
    },
    "cpu": {
        "arch": (_one_of(*ARCHES), f"one of {', '.join(ARCHES)}", True),
        "cores": (_pos_int, "a positive integer", True),
        "model": (_str, "a non-empty string", False),
        "isa": (_str_list, "a list of strings", True),
    },
    "memory": {"ram_mb": (_pos_int, "a positive integer (MB)", True)},
    "formats": {"preferred": (_list_of(*FORMATS), f"a non-empty list of {', '.join(FORMATS)}", True)},
    "recipe": {
        "default": (_list_of(*PRECISIONS), f"a non-empty list of {', '.join(PRECISIONS)}", True),
        "activation_dtype": (_one_of("int8", "uint8"), "int8 or uint8", False),
        "tflite_io_dtype": (_one_of("float32", "int8", "uint8"), "float32, int8 or uint8", False),
        "int8_kernels": (_one_of(*INT8_KERNELS), f"one of {', '.join(INT8_KERNELS)}", False),
        "int8_fallback": (_one_of("float", "int16"), "float or int16 (what ONNX int8 artifacts do with nodes kept "
                          "out of 8 bits)", False),
    },
    "runtime": {
        "threads": (_pos_int, "a positive integer", False),
        "onnx_providers": (lambda v: isinstance(v, list) and all(x in ORT_PROVIDERS for x in v),
                           "a list of ONNX Runtime execution provider names, e.g. [\"CPUExecutionProvider\"]", False),
        "tflite_delegates": (lambda v: isinstance(v, list) and all(x in DELEGATE_NAMES for x in v),
                             f"a list of delegate names ({', '.join(sorted(DELEGATE_NAMES))}); never a library path", False),
        "batch": (_pos_int, "a positive integer (images per engine call in `run`)", False),
        "coreml_compute_units": (_one_of(*COMPUTE_UNITS), f"one of {', '.join(COMPUTE_UNITS)}", False),
        "coreml_target": (_one_of(*COREML_TARGETS), f"one of {', '.join(COREML_TARGETS)}", False),
        "tflite_input_layout": (_one_of("NHWC", "NCHW"), "NHWC or NCHW", False),
    },
    "prune": {
        "channel_multiple": (_pos_int, "a positive integer", False),
        "min_channels": (_pos_int, "a positive integer", False),
    },
}

ACCELERATOR_SCHEMA: dict[str, Check] = {
    "kind": (_one_of(*ACCEL_KINDS), f"one of {', '.join(ACCEL_KINDS)}", True),
    "name": (_str, "a non-empty string", True),
    "dtypes": (_list_of(*PRECISIONS), f"a non-empty list of {', '.join(PRECISIONS)}", True),
    "format": (_one_of(*FORMATS), f"one of {', '.join(FORMATS)}", True),
    "reach": (_str, "the EP / delegate / compute unit that reaches it", True),
    "ops": (_str_list, "a list of op names the accelerator runs", False),
    "note": (_str, "a string", False),
}


@dataclass
class Profile:
    name: str
    data: dict[str, Any]
    path: Path

    @property
    def display_name(self) -> str: return self.data["display_name"]
    @property
    def preferred_formats(self) -> list[str]: return list(self.data["formats"]["preferred"])
    @property
    def default_recipe(self) -> list[str]: return list(self.data["recipe"]["default"])
    @property
    def runtime(self) -> dict[str, Any]: return dict(self.data.get("runtime", {}))
    @property
    def int8_kernels(self) -> str:
        """What the device's CPU int8 kernels compute (``edgeinfer.int8_arith.KERNELS``); stated in
        ``[recipe] int8_kernels``, else derived from ``[cpu]`` (x86 without a VNNI/AMX ISA entry: x86-avx2)."""
        stated = self.data["recipe"].get("int8_kernels")
        if stated:
            return stated
        isa = " ".join(self.data["cpu"].get("isa", [])).lower()
        if self.data["cpu"]["arch"] == "x86_64":
            return "x86-vnni" if ("vnni" in isa or "amx" in isa) else "x86-avx2"
        return "arm-dotprod" if "dotprod" in isa else "arm-neon"
    @property
    def accelerators(self) -> list[dict[str, Any]]: return list(self.data.get("accelerators", []))

    def to_manifest(self) -> dict[str, Any]:
        """What a bundle records of its profile (the runtime needs only this)."""
        return {"name": self.name, "display_name": self.display_name, "arch": self.data["cpu"]["arch"],
                "int8_kernels": self.int8_kernels, "runtime": self.runtime, "accelerators": self.accelerators}


def profiles_dir() -> Path:
    """Installed wheel: edgeinfer/device_profiles; source checkout: <repo>/device_profiles."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "device_profiles", here.parent / "device_profiles"):
        if candidate.is_dir() and any(candidate.glob("*.toml")):
            return candidate
    raise EdgeInferError("no device profiles found: the edgeinfer installation is incomplete; reinstall it")


def _check_table(table: dict[str, Any], schema: dict[str, Check], where: str, path: Path) -> None:
    for key, value in table.items():
        if key not in schema:
            raise EdgeInferError(f"{path.name}: unknown key {where}{key}; allowed: {', '.join(schema)}")
        check, expect, _ = schema[key]
        if not check(value):
            raise EdgeInferError(f"{path.name}: {where}{key} = {value!r} is invalid; expected {expect}")
    for key, (_, expect, required) in schema.items():
        if required and key not in table:
            raise EdgeInferError(f"{path.name}: missing key {where}{key} ({expect})")


def validate(data: dict[str, Any], path: Path) -> None:
    sections = set(SCHEMA) - {""} | {"accelerators"}
    top = {k: v for k, v in data.items() if not isinstance(v, (dict, list)) or k == "isa"}
    for key, value in data.items():
        if isinstance(value, (dict, list)) and key not in sections:
            raise EdgeInferError(f"{path.name}: unknown section [{key}]; allowed: {', '.join(sorted(sections))}")
    _check_table(top, SCHEMA[""], "", path)
    for section, schema in SCHEMA.items():
        if not section:
            continue
        table = data.get(section)
        if table is None:
            if any(req for _, _, req in schema.values()):
                raise EdgeInferError(f"{path.name}: missing section [{section}]")
            continue
        if not isinstance(table, dict):
            raise EdgeInferError(f"{path.name}: [{section}] must be a table")
        _check_table(table, schema, f"{section}.", path)
    accels = data.get("accelerators", [])
    if not isinstance(accels, list):
        raise EdgeInferError(f"{path.name}: accelerators must be an array of tables ([[accelerators]])")
    for i, acc in enumerate(accels):
        _check_table(acc, ACCELERATOR_SCHEMA, f"accelerators[{i}].", path)
    if data["name"] != path.stem:
        raise EdgeInferError(f"{path.name}: name = {data['name']!r} must match the file name {path.stem!r}")


def load_profile_file(path: Path) -> Profile:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgeInferError(f"{path.name}: not valid TOML ({exc}); fix the file or use a shipped profile") from None
    validate(data, path)
    return Profile(data["name"], data, path)


def profile_names() -> list[str]:
    return sorted(p.stem for p in profiles_dir().glob("*.toml"))


def load_profile(name: str) -> Profile:
    """A profile by name, or by path to a .toml file; unknown names suggest the closest ones."""
    if name.endswith(".toml"):
        if not Path(name).is_file():
            raise EdgeInferError(f"profile file not found: {name}")
        return load_profile_file(Path(name))
    names = profile_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else "run `edgeinfer profiles` to list them"
        raise EdgeInferError(f"unknown device profile {name!r}; {hint}")
    return load_profile_file(profiles_dir() / f"{name}.toml")


def installed_runtime(name: object) -> dict[str, Any]:
    """The ``[runtime]`` section of the profile named ``name`` installed with this edgeinfer, {} when none is.

    Bundles name their profile; delegates, providers and threads come from the installed file of that
    name, never from the bundle's own copy (a bundle must not choose which native code runs)."""
    if not isinstance(name, str) or name not in profile_names():
        return {}
    return load_profile_file(profiles_dir() / f"{name}.toml").runtime


def all_profiles() -> list[Profile]:
    return [load_profile(n) for n in profile_names()]
