"""edgeinfer runtime: run converted bundles on the device with numpy, pillow and one engine."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import EdgeInferError, NotSupportedYet  # noqa: E402


def __getattr__(name):  # lazy: keeps `import edgeinfer` light
    if name == "Predictor":
        from .predictor import Predictor
        return Predictor
    if name == "convert":  # the converter wing (edgeinfer[convert]), imported only when asked for
        from converters.api import convert
        return convert
    raise AttributeError(name)


__all__ = ["Predictor", "convert", "EdgeInferError", "NotSupportedYet", "__version__"]
