"""TFLite Metadata writer: ``TFLITE_METADATA`` (ModelMetadata, file identifier ``M001``) plus the
associated files (labels) as a zip appended to the .tflite, the layout the TFLite Support library,
MediaPipe Tasks and Android Studio's ML Model Binding read. No TensorFlow: the schema module is
generated from tflite-support's ``metadata_schema.fbs`` (``tools/gen_tflite_metadata_schema.py``).

Contract: ``model_metadata(...)`` returns the metadata flatbuffer bytes; ``attach(tflite, meta, files)``
returns the model with the entry set (replacing an existing one) and ``files`` zipped (stored, not
deflated) after the flatbuffer; interpreters ignore the trailing zip.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import flatbuffers

from . import metadata_schema_py_generated as md

METADATA_NAME = "TFLITE_METADATA"
MIN_PARSER_VERSION = "1.0.0"     # only fields of schema 1.0.0 are written


@dataclass
class TensorInfo:
    """One input/output tensor's metadata. ``kind``: "image" | "feature" | "boxes"."""

    name: str
    description: str = ""
    kind: str = "feature"
    color: str = "rgb"                       # image: "rgb" | "gray"
    size: tuple[int, int] | None = None      # image: (width, height)
    mean: list[float] | None = None          # image normalization in 0..255 units: (pixel - mean) / std
    std: list[float] | None = None
    value_min: float | None = None           # statistics of the tensor's values (e.g. 0..1 probabilities)
    value_max: float | None = None
    labels_file: str | None = None           # associated labels
    labels_kind: str = "axis"                # "axis": one label per score; "value": values index the labels
    dims_range: tuple[int, int] | None = None   # Content.range: the dimensions the content spans
    box_index: list[int] | None = None       # boxes: order of left, top, right, bottom in the last dim


@dataclass
class ModelInfo:
    name: str
    description: str
    version: str
    author: str
    license: str
    inputs: list[TensorInfo] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)


_LABEL_TYPES = {"axis": md.AssociatedFileType.TENSOR_AXIS_LABELS, "value": md.AssociatedFileType.TENSOR_VALUE_LABELS}


def _content(t: TensorInfo) -> md.ContentT:
    c = md.ContentT()
    if t.kind == "image":
        p = md.ImagePropertiesT()
        p.colorSpace = md.ColorSpaceType.RGB if t.color == "rgb" else md.ColorSpaceType.GRAYSCALE
        if t.size:
            p.defaultSize = md.ImageSizeT()
            p.defaultSize.width, p.defaultSize.height = int(t.size[0]), int(t.size[1])
        c.contentPropertiesType, c.contentProperties = md.ContentProperties.ImageProperties, p
    elif t.kind == "boxes":
        p = md.BoundingBoxPropertiesT()
        p.index = list(t.box_index or [0, 1, 2, 3])
        p.type = md.BoundingBoxType.BOUNDARIES
        p.coordinateType = md.CoordinateType.RATIO
        c.contentPropertiesType, c.contentProperties = md.ContentProperties.BoundingBoxProperties, p
    else:
        c.contentPropertiesType, c.contentProperties = md.ContentProperties.FeatureProperties, md.FeaturePropertiesT()
    if t.dims_range:
        c.range = md.ValueRangeT()
        c.range.min, c.range.max = int(t.dims_range[0]), int(t.dims_range[1])
    return c


def _tensor(t: TensorInfo) -> md.TensorMetadataT:
    m = md.TensorMetadataT()
    m.name, m.description = t.name, t.description
    m.content = _content(t)
    if t.mean is not None and t.std is not None:
        norm = md.NormalizationOptionsT()
        norm.mean = [float(v) for v in t.mean]
        norm.std = [float(v) for v in t.std]
        pu = md.ProcessUnitT()
        pu.optionsType, pu.options = md.ProcessUnitOptions.NormalizationOptions, norm
        m.processUnits = [pu]
    if t.value_min is not None or t.value_max is not None:
        m.stats = md.StatsT()
        m.stats.min = None if t.value_min is None else [float(t.value_min)]
        m.stats.max = None if t.value_max is None else [float(t.value_max)]
    if t.labels_file:
        f = md.AssociatedFileT()
        f.name = t.labels_file
        f.description = "Labels, one per line; line i is class i."
        f.type = _LABEL_TYPES[t.labels_kind]
        m.associatedFiles = [f]
    return m


def model_metadata(info: ModelInfo) -> bytes:
    """The ``TFLITE_METADATA`` flatbuffer for ``info`` (one subgraph)."""
    sg = md.SubGraphMetadataT()
    sg.name = info.name
    sg.inputTensorMetadata = [_tensor(t) for t in info.inputs]
    sg.outputTensorMetadata = [_tensor(t) for t in info.outputs]
    m = md.ModelMetadataT()
    m.name, m.description, m.version = info.name, info.description, info.version
    m.author, m.license = info.author, info.license
    m.subgraphMetadata = [sg]
    m.minParserVersion = MIN_PARSER_VERSION
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"M001")
    return bytes(b.Output())


def read_model_metadata(data: bytes) -> md.ModelMetadataT:
    """Parse a ``TFLITE_METADATA`` buffer (checks the ``M001`` identifier)."""
    if data[4:8] != b"M001":
        raise ValueError("not a TFLite ModelMetadata buffer (file identifier is not M001)")
    return md.ModelMetadataT.InitFromObj(md.ModelMetadata.GetRootAs(bytearray(data), 0))


def append_files(tflite: bytes, files: dict[str, bytes]) -> bytes:
    """``tflite`` followed by a zip holding ``files`` stored uncompressed (offsets relative to the file start)."""
    if not files:
        return tflite
    buf = io.BytesIO(tflite)
    buf.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            zi = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))   # fixed date: reproducible files
            z.writestr(zi, data)
    return buf.getvalue()


def associated_files(data: bytes) -> dict[str, bytes]:
    """The files zipped after a .tflite flatbuffer ({} when there is no zip)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {n: z.read(n) for n in z.namelist()}
    except zipfile.BadZipFile:
        return {}
