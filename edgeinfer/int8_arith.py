"""What a CPU's int8 kernels compute, for this host and for a device profile.

ONNX Runtime's x86 u8s8 kernels on CPUs without VNNI (AVX2/SSE: ``VPMADDUBSW``) add each pair of
adjacent uint8 x int8 products in a saturating 16-bit lane before widening, so a pair whose sum
exceeds 32767 is clipped. VNNI/AMX, ARM NEON (widening multiplies) and ARM dot-product kernels,
and TFLite's integer kernels accumulate exactly in 32 bits. A QDQ ONNX model gives different
answers on the two kinds unless its weights make the clipping impossible ("pair-safe" weights).

Names (``KERNELS``) are what profiles state in ``[recipe] int8_kernels`` and what verification
figures record as their arithmetic (``host-ort-<name>``).
"""
from __future__ import annotations

import os
import platform
import sys
from functools import lru_cache
from pathlib import Path

KERNELS = {
    "x86-avx2": "x86-64 without VNNI: uint8 x int8 pairs summed in saturating 16-bit lanes (VPMADDUBSW)",
    "x86-vnni": "x86-64 with AVX512-VNNI / AVX-VNNI / AMX: exact 32-bit accumulation",
    "arm-neon": "ARMv8 NEON widening multiplies (Cortex-A53/A72): exact 32-bit accumulation",
    "arm-dotprod": "ARMv8.2 dot product (Cortex-A55/A76 and later): exact 32-bit accumulation",
}
SATURATING = frozenset({"x86-avx2"})
ENV_OVERRIDE = "EDGEINFER_HOST_INT8_KERNELS"   # tests and users on unusual hosts set it


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@lru_cache(maxsize=1)
def _detect() -> str:
    machine = platform.machine().lower()
    flags = _cpu_flags()
    if machine in ("aarch64", "arm64", "armv8l"):
        return "arm-dotprod" if ("asimddp" in flags or sys.platform == "darwin") else "arm-neon"
    if flags & {"avx512_vnni", "avx_vnni", "amx_int8"}:
        return "x86-vnni"
    return "x86-avx2"   # x86 without VNNI, or no way to tell: assume the saturating kind


def host_int8_kernels() -> str:
    """The kind of int8 kernels ONNX Runtime uses on this host (``EDGEINFER_HOST_INT8_KERNELS`` overrides)."""
    forced = os.environ.get(ENV_OVERRIDE)
    if forced:
        if forced not in KERNELS:
            from .errors import EdgeInferError
            raise EdgeInferError(f"{ENV_OVERRIDE}={forced!r} is not one of {', '.join(KERNELS)}")
        return forced
    return _detect()


def saturates(kernels: str) -> bool:
    return kernels in SATURATING


def host_arithmetic(engine: str = "ort") -> str:
    """Label of a figure computed by ``engine`` on this host, e.g. ``host-ort-x86-avx2``."""
    return f"host-{engine}-{host_int8_kernels()}"


def saturation_warning(entry: dict) -> str | None:
    """A one-line warning when this host would run the int8 ONNX artifact ``entry`` with saturation."""
    if not isinstance(entry, dict):
        return None
    details = entry.get("details") if isinstance(entry.get("details"), dict) else {}   # an untrusted manifest
    if entry.get("format") != "onnx" or entry.get("precision") != "int8" or details.get("pair_safe_weights", True):
        return None
    host = host_int8_kernels()
    if not saturates(host):
        return None
    return (f"{entry.get('file')} has full 8-bit weights for exact-accumulating int8 kernels (ARM, x86 VNNI); "
            f"this CPU ({host}, no VNNI) saturates 16-bit pair sums in ONNX Runtime and loses accuracy: "
            "use the bundle's TFLite artifact, or a bundle converted for --profile generic-x86-64")
