"""The built-in names of TFLite delegates and ONNX Runtime execution providers.

Only these names may come from a device profile; a delegate *library path* is accepted from the
caller alone (``--delegate PATH``, ``Predictor(delegates=[PATH])``), never from a bundle or a
profile, because loading a library runs its native code.
"""
from __future__ import annotations

# delegate name -> candidate shared libraries per platform (first found wins)
DELEGATE_LIBRARIES: dict[str, dict[str, list[str]]] = {
    "gpu": {"linux": ["libtensorflowlite_gpu_delegate.so"], "darwin": ["libtensorflowlite_gpu_delegate.dylib"],
            "win32": ["tensorflowlite_gpu_delegate.dll"]},
    "nnapi": {"linux": ["libtensorflowlite_nnapi_delegate.so", "libnnapi_delegate.so"]},
    "hexagon": {"linux": ["libhexagon_delegate.so", "libQnnTFLiteDelegate.so"]},
    "qnn": {"linux": ["libQnnTFLiteDelegate.so"]},
    "edgetpu": {"linux": ["libedgetpu.so.1"], "darwin": ["libedgetpu.1.dylib"], "win32": ["edgetpu.dll"]},
}
BUILTIN_DELEGATES = frozenset({"xnnpack"})   # part of the interpreter's default CPU kernels: nothing to load
DELEGATE_NAMES = frozenset(DELEGATE_LIBRARIES) | BUILTIN_DELEGATES

# execution providers ONNX Runtime builds register by these names (a provider is part of the ORT build:
# choosing one by name loads no library that the build does not already ship)
ORT_PROVIDERS = frozenset({
    "CPUExecutionProvider", "XNNPACKExecutionProvider", "QNNExecutionProvider", "CUDAExecutionProvider",
    "TensorrtExecutionProvider", "CoreMLExecutionProvider", "NnapiExecutionProvider", "DmlExecutionProvider",
    "OpenVINOExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider", "ACLExecutionProvider",
    "ArmNNExecutionProvider", "DnnlExecutionProvider", "VitisAIExecutionProvider", "WebGpuExecutionProvider",
})


def is_library_path(name: str) -> bool:
    """True when a delegate is given as a shared-library path rather than a built-in name."""
    return "/" in name or "\\" in name or name.endswith((".so", ".dylib", ".dll")) or ".so." in name
