"""A numpy evaluator for Core ML ML Programs, read back from a saved ``.mlpackage``.

Core ML cannot execute on Linux, so this is how the emitted file is verified there: the
program is taken from the package's spec (``mlProgram`` protobuf) and weight blobs
(``Data/com.apple.CoreML/weights/weight.bin``), and every operation runs through one numpy
function per MIL op, registered in ``OPS``. Semantics follow the Core ML MIL op definitions
(NCHW layouts, ``pad_type`` valid/same/same_lower/custom, epsilon, constexpr decompression).
Each op computes in float32 and its result is stored in the dtype the spec declares for the
output, so fp16 programs round every intermediate tensor to fp16 as the device would.
An op not in ``OPS`` raises ``EdgeInferError`` naming it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from edgeinfer.errors import EdgeInferError

OPS: dict[str, Callable[..., Any]] = {}


def op(*names: str):
    def register(fn):
        for n in names:
            OPS[n] = fn
        return fn
    return register


def _f(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


# ---------------------------------------------------------------- elementwise
@op("add")
def _add(x, y): return _f(x) + _f(y)
@op("sub")
def _sub(x, y): return _f(x) - _f(y)
@op("mul")
def _mul(x, y): return _f(x) * _f(y)
@op("real_div")
def _div(x, y): return _f(x) / _f(y)
@op("maximum")
def _maximum(x, y): return np.maximum(_f(x), _f(y))
@op("minimum")
def _minimum(x, y): return np.minimum(_f(x), _f(y))
@op("relu")
def _relu(x): return np.maximum(_f(x), 0)
@op("relu6")
def _relu6(x): return np.clip(_f(x), 0, 6)
@op("sigmoid")
def _sigmoid(x): return 1 / (1 + np.exp(-_f(x)))
@op("silu")
def _silu(x):
    x = _f(x)
    with np.errstate(over="ignore"):      # exp(-x) -> inf for very negative x gives the right limit, -0
        return x / (1 + np.exp(-x))
@op("tanh")
def _tanh(x): return np.tanh(_f(x))
@op("leaky_relu")
def _leaky(x, alpha=0.01): x = _f(x); return np.where(x >= 0, x, x * np.float32(alpha))
@op("clip")
def _clip(x, alpha, beta): return np.minimum(np.maximum(_f(x), np.float32(alpha)), np.float32(beta))
@op("sigmoid_hard")
def _hsig(x, alpha=0.2, beta=0.5): return np.clip(np.float32(alpha) * _f(x) + np.float32(beta), 0, 1)
@op("identity")
def _identity(x): return np.asarray(x)
@op("sqrt")
def _sqrt(x): return np.sqrt(_f(x))
@op("rsqrt")
def _rsqrt(x, epsilon=1e-12): return 1 / np.sqrt(_f(x) + np.float32(epsilon))


@op("cast")
def _cast(x, dtype):
    table = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16, "bool": bool, "int8": np.int8, "uint8": np.uint8}
    return np.asarray(x).astype(table[str(dtype)])


@op("softmax")
def _softmax(x, axis=-1):
    x = _f(x)
    e = np.exp(x - x.max(axis=int(axis), keepdims=True))
    return e / e.sum(axis=int(axis), keepdims=True)


# ---------------------------------------------------------------- shapes
@op("reshape")
def _reshape(x, shape): return np.reshape(x, [int(s) for s in shape])
@op("transpose")
def _transpose(x, perm): return np.transpose(x, [int(p) for p in perm])
@op("squeeze")
def _squeeze(x, axes=None): return np.squeeze(x, axis=None if axes is None else tuple(int(a) for a in np.ravel(axes)))
@op("expand_dims")
def _expand(x, axes):
    out = np.asarray(x)
    rank = out.ndim + len(np.ravel(axes))
    for a in sorted(int(a) % rank for a in np.ravel(axes)):
        out = np.expand_dims(out, a)
    return out


@op("concat")
def _concat(values, axis, interleave=False):
    if interleave:
        raise EdgeInferError("MIL evaluator: concat with interleave=True is not supported")
    return np.concatenate([np.asarray(v) for v in values], axis=int(axis))


@op("split")
def _split(x, axis, num_splits=None, split_sizes=None):
    x = np.asarray(x)
    if split_sizes is None:
        split_sizes = [x.shape[int(axis)] // int(num_splits)] * int(num_splits)
    cuts = np.cumsum([int(s) for s in split_sizes])[:-1]
    return tuple(np.split(x, cuts, axis=int(axis)))


@op("slice_by_index")
def _slice(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    x = np.asarray(x)
    n = x.ndim
    stride = [1] * n if stride is None else [int(s) for s in stride]
    bm = [False] * n if begin_mask is None else list(begin_mask)
    em = [False] * n if end_mask is None else list(end_mask)
    sq = [False] * n if squeeze_mask is None else list(squeeze_mask)
    idx = []
    for d in range(n):
        b = None if bm[d] else int(begin[d])
        e = None if em[d] else int(end[d])
        idx.append(int(begin[d]) if sq[d] else slice(b, e, stride[d]))
    return x[tuple(idx)]


@op("gather")
def _gather(x, indices, axis=0, batch_dims=0, validate_indices=False):
    if int(batch_dims):
        raise EdgeInferError("MIL evaluator: gather with batch_dims is not supported")
    return np.take(np.asarray(x), np.asarray(indices).astype(np.int64), axis=int(axis))


# ---------------------------------------------------------------- reductions
def _reduce(fn):
    def run(x, axes=None, keep_dims=False):
        ax = None if axes is None else tuple(int(a) for a in np.ravel(axes))
        return fn(_f(x), axis=ax, keepdims=bool(keep_dims))
    return run


OPS["reduce_mean"] = _reduce(np.mean)
OPS["reduce_max"] = _reduce(np.max)
OPS["reduce_sum"] = _reduce(np.sum)


# ---------------------------------------------------------------- dense / conv
@op("linear")
def _linear(x, weight, bias=None):
    y = _f(x) @ _f(weight).T
    return y if bias is None else y + _f(bias)


@op("matmul")
def _matmul(x, y, transpose_x=False, transpose_y=False):
    a, b = _f(x), _f(y)
    if transpose_x:
        a = np.swapaxes(a, -1, -2)
    if transpose_y:
        b = np.swapaxes(b, -1, -2)
    return a @ b


def _pads(pad_type: str, pad, in_sp, k_sp, strides, dilations) -> list[tuple[int, int]]:
    """(begin, end) padding per spatial dim for MIL pad_type."""
    pad_type = str(pad_type)
    if pad_type == "valid":
        return [(0, 0)] * len(in_sp)
    if pad_type == "custom":
        p = [int(v) for v in pad]
        return [(p[2 * i], p[2 * i + 1]) for i in range(len(in_sp))]
    out = []
    for n, k, s, d in zip(in_sp, k_sp, strides, dilations):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        small, big = total // 2, total - total // 2
        out.append((small, big) if pad_type == "same" else (big, small))
    return out


def _windows(xp: np.ndarray, k_sp, strides, dilations) -> np.ndarray:
    """[N, C, *out_sp, *k_sp] strided/dilated windows over the spatial dims of a padded tensor."""
    nsp = len(k_sp)
    eff = [(k - 1) * d + 1 for k, d in zip(k_sp, dilations)]
    w = sliding_window_view(xp, eff, axis=tuple(range(2, 2 + nsp)))
    sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) + tuple(slice(None, None, d) for d in dilations)
    return w[sl]


@op("conv")
def _conv(x, weight, strides=None, pad_type="valid", pad=None, dilations=None, groups=1, bias=None):
    x, w = _f(x), _f(weight)
    nsp = w.ndim - 2
    strides = [1] * nsp if strides is None else [int(s) for s in strides]
    dilations = [1] * nsp if dilations is None else [int(d) for d in dilations]
    p = _pads(pad_type, pad, x.shape[2:], w.shape[2:], strides, dilations)
    xp = np.pad(x, [(0, 0), (0, 0)] + p) if any(a or b for a, b in p) else x
    win = _windows(xp, w.shape[2:], strides, dilations)          # N, C, *O, *K
    g = int(groups)
    n, c = win.shape[:2]
    out_sp = win.shape[2:2 + nsp]
    if nsp == 2 and g == c == w.shape[0] and w.shape[1] == 1:    # depthwise: one multiply-add per tap
        y = np.zeros((n, c, *out_sp), np.float32)
        for i in range(w.shape[2]):
            for j in range(w.shape[3]):
                y += win[..., i, j] * w[:, 0, i, j].reshape(1, c, 1, 1)
    elif nsp == 2 and g == 1:                                    # im2col + one matrix product
        cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n, out_sp[0] * out_sp[1], -1)
        y = (cols @ w.reshape(w.shape[0], -1).T).transpose(0, 2, 1)
    elif nsp == 2:
        win = win.reshape(n, g, c // g, *out_sp, *w.shape[2:])
        wg = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        y = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True)
    elif nsp == 1:
        win = win.reshape(n, g, c // g, *out_sp, *w.shape[2:])
        wg = w.reshape(g, w.shape[0] // g, w.shape[1], *w.shape[2:])
        y = np.einsum("ngchi,goci->ngoh", win, wg, optimize=True)
    else:
        raise EdgeInferError(f"MIL evaluator: conv with {nsp} spatial dims is not supported")
    y = y.reshape(n, w.shape[0], *out_sp)
    if bias is not None:
        y = y + _f(bias).reshape(1, -1, *([1] * nsp))
    return y


@op("batch_norm")
def _batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=1e-5):
    x = _f(x)
    shp = (1, -1) + (1,) * (x.ndim - 2)
    y = (x - _f(mean).reshape(shp)) / np.sqrt(_f(variance).reshape(shp) + np.float32(epsilon))
    if gamma is not None:
        y = y * _f(gamma).reshape(shp)
    if beta is not None:
        y = y + _f(beta).reshape(shp)
    return y


def _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, fill):
    x = _f(x)
    k = [int(v) for v in kernel_sizes]
    nsp = len(k)
    s = [1] * nsp if strides is None else [int(v) for v in strides]
    p = _pads(pad_type, pad, x.shape[2:], k, s, [1] * nsp)
    if ceil_mode:   # extend the end padding so the last partial window exists (it must start inside input + begin pad)
        p2 = []
        for (b, e), n, kk, ss in zip(p, x.shape[2:], k, s):
            out = -(-(n + b + e - kk) // ss) + 1
            if (out - 1) * ss >= n + b:
                out -= 1
            p2.append((b, max(e, (out - 1) * ss + kk - n - b)))
        p = p2
    xp = np.pad(x, [(0, 0), (0, 0)] + p, constant_values=fill)
    return _windows(xp, k, s, [1] * nsp), p, k, s


@op("max_pool")
def _max_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, ceil_mode=False):
    win, *_ = _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, -np.inf)
    return win.max(axis=tuple(range(-len(kernel_sizes), 0)))


@op("avg_pool")
def _avg_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, exclude_padding_from_average=False, ceil_mode=False):
    win, p, k, s = _pool(x, kernel_sizes, strides, pad_type, pad, ceil_mode, 0.0)
    axes = tuple(range(-len(k), 0))
    total = win.sum(axis=axes)
    if exclude_padding_from_average:
        ones = np.pad(np.ones((1, 1) + np.shape(x)[2:], np.float32), [(0, 0), (0, 0)] + p)
        count = _windows(ones, k, s, [1] * len(k)).sum(axis=axes)
    else:   # padding counts, but not the extra ceil-mode tail beyond the declared padding
        decl = _pads(pad_type, pad, np.shape(x)[2:], k, s, [1] * len(k))
        inside = np.pad(np.ones((1, 1) + tuple(n + b + e for n, (b, e) in zip(np.shape(x)[2:], decl)), np.float32),
                        [(0, 0), (0, 0)] + [(0, pp[1] - dd[1]) for pp, dd in zip(p, decl)])
        count = _windows(inside, k, s, [1] * len(k)).sum(axis=axes)
    return total / count


@op("pad")
def _pad(x, pad, mode="constant", constant_val=0.0):
    x = np.asarray(x)
    p = [int(v) for v in pad]
    n = len(p) // 2
    widths = [(0, 0)] * (x.ndim - n) + [(p[2 * i], p[2 * i + 1]) for i in range(n)]
    if str(mode) == "constant":
        return np.pad(_f(x), widths, constant_values=np.float32(constant_val))
    return np.pad(_f(x), widths, mode={"reflect": "reflect", "replicate": "edge"}[str(mode)])


# ---------------------------------------------------------------- resize
@op("upsample_nearest_neighbor")
def _upsample_nn(x, scale_factor_height=1, scale_factor_width=1):
    x = _f(x)
    h, w = x.shape[-2:]
    oh, ow = int(np.floor(h * float(scale_factor_height))), int(np.floor(w * float(scale_factor_width)))
    ri = np.minimum((np.arange(oh) / float(scale_factor_height)).astype(np.int64), h - 1)
    ci = np.minimum((np.arange(ow) / float(scale_factor_width)).astype(np.int64), w - 1)
    return x[..., ri, :][..., ci]


def _grid(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """Sampling positions of ``resize_bilinear`` (MIL doc formulas), clamped to [0, n_in-1]."""
    i = np.arange(n_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            g = np.array([(n_in - 1) / 2.0 if mode == "ALIGN_CORNERS" else 0.0])
        else:
            g = i * (n_in - 1) / (n_out - 1)
    elif mode == "DEFAULT":
        g = i * ((n_in - n_in / n_out) / (n_out - 1) if n_out > 1 else 0.0)
    elif mode == "OFFSET_CORNERS":
        delta = max(1, n_in - 1) / n_out
        g = 0.5 * delta + i * delta
    elif mode == "UNALIGN_CORNERS":
        sp = n_in / n_out
        g = i * sp + 0.5 * sp - 0.5
    else:
        raise EdgeInferError(f"MIL evaluator: resize_bilinear sampling_mode {mode!r} is not supported")
    return np.clip(g, 0, n_in - 1)


def _interp_axis(x: np.ndarray, g: np.ndarray, axis: int) -> np.ndarray:
    lo = np.floor(g).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[axis] - 1)
    t = (g - lo).astype(np.float32)
    shp = [1] * x.ndim
    shp[axis] = -1
    return np.take(x, lo, axis=axis) * (1 - t.reshape(shp)) + np.take(x, hi, axis=axis) * t.reshape(shp)


@op("resize_bilinear")
def _resize_bilinear(x, target_size_height=1, target_size_width=1, sampling_mode="DEFAULT"):
    x = _f(x)
    y = _interp_axis(x, _grid(x.shape[-2], int(target_size_height), str(sampling_mode)), x.ndim - 2)
    return _interp_axis(y, _grid(x.shape[-1], int(target_size_width), str(sampling_mode)), x.ndim - 1)


@op("upsample_bilinear")
def _upsample_bilinear(x, scale_factor_height=1, scale_factor_width=1, align_corners=True, half_pixel_centers=None):
    x = _f(x)
    oh, ow = int(np.floor(x.shape[-2] * float(scale_factor_height))), int(np.floor(x.shape[-1] * float(scale_factor_width)))
    mode = "STRICT_ALIGN_CORNERS" if bool(align_corners) else "UNALIGN_CORNERS"
    return _resize_bilinear(x, oh, ow, mode)


# ---------------------------------------------------------------- classifier
@op("classify")
def _classify(probabilities, classes):
    """Returns (label of the arg-max, the probability vector): the dict output is the vector."""
    p = _f(probabilities).reshape(-1)
    return np.asarray(classes)[int(np.argmax(p))], p


# ---------------------------------------------------------------- activation quantization
@op("quantize")
def _quantize(input, scale, output_dtype, zero_point=None, axis=None):
    info = np.iinfo(np.int8 if str(output_dtype) == "int8" else np.uint8)
    x, s = _f(input), _f(scale)
    zp = np.zeros_like(s) if zero_point is None else np.asarray(zero_point, np.float32)
    if axis is not None and s.ndim == 1:
        shp = [1] * x.ndim
        shp[int(axis)] = -1
        s, zp = s.reshape(shp), zp.reshape(shp)
    return np.clip(np.round(x / s) + zp, info.min, info.max).astype(info.dtype)


@op("dequantize")
def _dequantize(input, scale, zero_point=None, axis=None):
    q, s = np.asarray(input, np.float32), _f(scale)
    zp = np.zeros_like(s) if zero_point is None else np.asarray(zero_point, np.float32)
    if axis is not None and s.ndim == 1:
        shp = [1] * q.ndim
        shp[int(axis)] = -1
        s, zp = s.reshape(shp), zp.reshape(shp)
    return (q - zp) * s


# ---------------------------------------------------------------- constexpr (compressed weights)
def _bcast_axis(v: np.ndarray, rank: int, axis: int) -> np.ndarray:
    v = np.asarray(v, np.float32)
    if v.ndim <= 1 and v.size > 1:
        shp = [1] * rank
        shp[axis] = -1
        return v.reshape(shp)
    return v


@op("constexpr_affine_dequantize")
def _affine_dequantize(quantized_data, zero_point, scale, axis):
    q = np.asarray(quantized_data, np.float32)
    ax = int(axis) % q.ndim
    return (q - _bcast_axis(zero_point, q.ndim, ax)) * _bcast_axis(scale, q.ndim, ax)


def _expand_blocks(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Repeat a per-block tensor (same rank) up to ``shape``: block size = shape / v.shape."""
    for ax, (n, m) in enumerate(zip(shape, v.shape)):
        if n != m:
            v = np.repeat(v, n // m, axis=ax)
    return v


@op("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(data, scale, offset=None):
    d = np.asarray(data, np.float32)
    s = _expand_blocks(np.asarray(scale, np.float32), d.shape)
    if offset is not None:
        d = d - _expand_blocks(np.asarray(offset, np.float32), d.shape)
    return d * s


def _unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """LSB-first bit fields of ``nbits`` from a uint8 byte stream (iOS16 constexpr packing)."""
    bits = np.unpackbits(np.asarray(packed, np.uint8), bitorder="little")[: nbits * count]
    return (bits.reshape(count, nbits) * (1 << np.arange(nbits))).sum(axis=1)


@op("constexpr_lut_to_dense")
def _lut_to_dense(indices, lut, shape=None, vector_axis=None):
    lut = np.asarray(lut)
    if shape is not None:    # iOS16: packed uint8 indices, 1-D lut
        shape = [int(s) for s in shape]
        nbits = int(np.log2(lut.size))
        idx = _unpack_bits(indices, nbits, int(np.prod(shape)))
        return lut.astype(np.float32)[idx].reshape(shape)
    idx = np.asarray(indices).astype(np.int64)   # iOS18: lut [*groups, NUM_PALETTES, VECTOR_SIZE]
    if lut.shape[-1] != 1:
        raise EdgeInferError("MIL evaluator: vector palettization (VECTOR_SIZE > 1) is not supported")
    table = lut[..., 0].astype(np.float32)                   # [*groups, P]
    groups = table.shape[:-1]
    block = [n // g for n, g in zip(idx.shape, groups)]
    gidx = np.meshgrid(*[np.arange(n) // b for n, b in zip(idx.shape, block)], indexing="ij")
    return table[tuple(gidx) + (idx,)]


@op("constexpr_sparse_to_dense")
def _sparse_to_dense(nonzero_data, mask, shape=None):
    nz = np.asarray(nonzero_data, np.float32)
    if shape is not None:    # iOS16: packed bit mask
        shape = [int(s) for s in shape]
        m = np.unpackbits(np.asarray(mask, np.uint8), bitorder="little")[: int(np.prod(shape))].astype(bool)
    else:
        m = np.asarray(mask).astype(bool)
        shape = list(m.shape)
        m = m.reshape(-1)
    out = np.zeros(m.size, np.float32)
    out[m] = nz.reshape(-1)
    return out.reshape(shape)


@op("constexpr_cast")
def _constexpr_cast(source_val, output_dtype):
    return _cast(source_val, output_dtype)


# ================================================================ reading the package
def _dtype_table():
    from coremltools.proto import MIL_pb2 as M

    D = M.DataType
    np_types = {D.FLOAT16: np.float16, D.FLOAT32: np.float32, D.FLOAT64: np.float64, D.INT8: np.int8, D.INT16: np.int16,
                D.INT32: np.int32, D.INT64: np.int64, D.UINT8: np.uint8, D.UINT16: np.uint16, D.UINT32: np.uint32,
                D.BOOL: np.bool_, D.STRING: np.object_, D.INT4: np.int8, D.UINT4: np.uint8, D.UINT2: np.uint8,
                D.UINT1: np.uint8, D.UINT3: np.uint8, D.UINT6: np.uint8}
    readers = {D.FLOAT16: "read_fp16_data", D.FLOAT32: "read_float_data", D.INT8: "read_int8_data", D.UINT8: "read_uint8_data",
               D.INT16: "read_int16_data", D.UINT16: "read_uint16_data", D.INT32: "read_int32_data", D.UINT32: "read_uint32_data",
               D.INT4: "read_int4_data", D.UINT4: "read_uint4_data", D.UINT2: "read_uint2_data", D.UINT1: "read_uint1_data",
               D.UINT3: "read_uint3_data", D.UINT6: "read_uint6_data"}
    return np_types, readers


class MilProgram:
    """The ``main`` function of a saved ML Program, executable with numpy."""

    def __init__(self, package: str | Path, spec=None):
        """``spec``: one ML Program stage of a pipeline package (its weights are in ``package``)."""
        import coremltools as ct
        from coremltools.libmilstoragepython import _BlobStorageReader

        self.path = Path(package)
        if spec is None:
            self.model = ct.models.MLModel(str(self.path), skip_model_load=True)
            spec = self.model.get_spec()
        self.spec = spec
        if not self.spec.HasField("mlProgram"):
            raise EdgeInferError(f"{self.path} is not an ML Program (mlprogram) package")
        fn = self.spec.mlProgram.functions["main"]
        self.block = fn.block_specializations[fn.opset]
        self.inputs = {i.name: i for i in fn.inputs}
        self._np_types, self._readers = _dtype_table()
        self._fp16_enum = next(k for k, v in self._np_types.items() if v is np.float16)
        self._weights_dir = self.path / "Data" / "com.apple.CoreML" / "weights"
        self._blob_readers: dict[str, Any] = {}
        self._reader_cls = _BlobStorageReader
        self.op_types = [o.type for o in self.block.operations]
        self._consts: dict[str, Any] = {}

    # -- values
    def _tensor_dtype(self, vtype) -> Any:
        return self._np_types.get(vtype.tensorType.dataType, np.float32)

    def value(self, v) -> Any:
        """Decode a MIL ``Value`` proto (immediate or blob) into numpy."""
        tt = v.type.tensorType
        shape = [int(d.constant.size) for d in tt.dimensions]
        if v.HasField("blobFileValue"):
            fname = v.blobFileValue.fileName.replace("@model_path/weights/", "")
            reader = self._blob_readers.get(fname)
            if reader is None:
                reader = self._blob_readers[fname] = self._reader_cls(str(self._weights_dir / fname))
            method = self._readers.get(tt.dataType)
            if method is None:
                raise EdgeInferError(f"MIL evaluator: weight blob dtype {tt.dataType} is not supported")
            arr = np.asarray(getattr(reader, method)(v.blobFileValue.offset))
            if tt.dataType == self._fp16_enum and arr.dtype != np.float16:
                arr = arr.view(np.float16)      # the reader returns the raw fp16 bits as uint16
            return arr.astype(self._tensor_dtype(v.type)).reshape(shape)
        imm = v.immediateValue
        if imm.HasField("list") or imm.HasField("tuple"):
            items = imm.list.values if imm.HasField("list") else imm.tuple.values
            return [self.value(x) for x in items]
        t = imm.tensor
        dt = self._tensor_dtype(v.type)
        if t.HasField("floats"):
            arr = np.array(t.floats.values, np.float32)
        elif t.HasField("ints"):
            arr = np.array(t.ints.values, np.int64)
        elif t.HasField("longInts"):
            arr = np.array(t.longInts.values, np.int64)
        elif t.HasField("bools"):
            arr = np.array(t.bools.values, bool)
        elif t.HasField("strings"):
            arr = np.array(list(t.strings.values), dtype=object)
        elif t.HasField("doubles"):
            arr = np.array(t.doubles.values, np.float64)
        elif t.HasField("bytes"):
            raw = np.frombuffer(t.bytes.values, dtype=dt if dt not in (np.object_,) else np.uint8)
            arr = raw
        else:
            arr = np.array([], dt)
        if dt is np.object_:
            arr = arr.reshape(shape) if shape else (arr[0] if arr.size else "")
            return arr
        arr = arr.astype(dt)
        return arr.reshape(shape) if shape else (arr.reshape(()) if arr.size == 1 else arr)

    # -- execution (``arg`` and ``store`` are hooks ``fp16_analysis`` overrides)
    def arg(self, o, name: str, val: Any) -> Any:
        """The value op ``o`` reads from the named variable ``name`` (as stored)."""
        return val

    def store(self, o, out, val) -> Any:
        """An op result as kept in the program: cast to the dtype the spec declares for ``out``."""
        if out.type.HasField("tensorType") and out.type.tensorType.dataType not in (0,):
            dt = self._tensor_dtype(out.type)
            if dt is not np.object_:
                val = np.asarray(val).astype(dt)
        return val

    def run(self, feeds: dict[str, np.ndarray], keep: bool = False) -> dict[str, np.ndarray]:
        """Execute ``main``. Returns the block outputs by name (all values when ``keep``)."""
        env: dict[str, Any] = {}
        for name, inp in self.inputs.items():
            if name not in feeds:
                raise EdgeInferError(f"MIL evaluator: missing input {name!r}")
            env[name] = np.asarray(feeds[name]).astype(self._tensor_dtype(inp.type))
        for o in self.block.operations:
            if o.type == "const":                    # decoded once per program (blobs are read once)
                name = o.outputs[0].name
                if name not in self._consts:
                    self._consts[name] = self.value(o.attributes["val"])
                env[name] = self._consts[name]
                continue
            fn = OPS.get(o.type)
            if fn is None:
                raise EdgeInferError(f"MIL evaluator: op {o.type!r} (output {o.outputs[0].name!r}) is not implemented; "
                                     f"implemented: {', '.join(sorted(OPS))}")
            args = {k: self.value(v) for k, v in o.attributes.items() if k != "name"}
            for key, arg in o.inputs.items():
                vals = [self.arg(o, b.name, env[b.name]) if b.name else self.value(b.value) for b in arg.arguments]
                args[key] = vals if (len(vals) > 1 or key == "values") else vals[0]
            try:
                res = fn(**args)
            except TypeError as exc:
                raise EdgeInferError(f"MIL evaluator: op {o.type!r} got unexpected arguments ({exc})") from None
            res = res if isinstance(res, tuple) else (res,)
            for out, val in zip(o.outputs, res):
                env[out.name] = self.store(o, out, val)
        if keep:
            return env
        return {name: env[name] for name in self.block.outputs}
