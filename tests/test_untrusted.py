"""Bundles and models are untrusted input: containment, no native code from data, integrity on open,
hostile model files, bounded memory, threads, nothing private in manifests, dependency bounds."""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DIGITS, ROOT, edgeinfer_cli

IMAGES = sorted((DIGITS / "images").glob("*.png"))


def copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


def edit_manifest(bundle: Path, edit) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    edit(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    err = proc.stderr.strip().splitlines()
    lines = [line for line in err if not line.startswith(("INFO:", "warning:"))]
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ---------------------------------------------------------------- 1. containment


@pytest.mark.parametrize("entry,value,words", [
    ("labels", "../../../../../../etc/hostname", ["labels", "'..'"]),
    ("labels", "/etc/hostname", ["labels", "absolute"]),
    ("file", "/", ["artifacts[0].file", "absolute"]),
    ("file", "..\\..\\secret.onnx", ["artifacts[0].file", "'..'"]),
    ("file", "C:/Windows/x.onnx", ["artifacts[0].file", "absolute"]),
    ("file", ".", ["artifacts[0].file", "bundle folder itself"]),
])
def test_manifest_paths_leaving_the_bundle_are_refused(digits_bundle, tmp_path, entry, value, words):
    b = copy_bundle(digits_bundle, tmp_path)
    edit_manifest(b, lambda m: m.__setitem__("labels", value) if entry == "labels" else m["artifacts"][0].__setitem__("file", value))
    one_line_error(edgeinfer_cli("run", b, IMAGES[0]), *words)
    if value.startswith("/"):    # every entry point reads the bundle through the same reader
        one_line_error(edgeinfer_cli("inspect", b), *words)
        one_line_error(edgeinfer_cli("eval", b, DIGITS / "heldout"), *words)


def test_symlinks_and_hard_links_leaving_the_bundle_are_refused(digits_bundle, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password\n" * 10)
    b = copy_bundle(digits_bundle, tmp_path)
    (b / "labels.txt").unlink()
    (b / "labels.txt").symlink_to(secret)
    one_line_error(edgeinfer_cli("run", b, IMAGES[0]), "labels", "outside the bundle")
    (b / "labels.txt").unlink()
    os.link(secret, b / "labels.txt")
    one_line_error(edgeinfer_cli("run", b, IMAGES[0]), "labels", "hard link")
    # a folder artifact (Core ML packages are folders) holding a symlink out
    (b / "labels.txt").unlink()
    shutil.copy(digits_bundle / "labels.txt", b / "labels.txt")
    pkg = b / "model.mlpackage"
    pkg.mkdir()
    (pkg / "weights.bin").symlink_to(secret)
    edit_manifest(b, lambda m: m["artifacts"].append({"file": "model.mlpackage", "format": "coreml"}))
    one_line_error(edgeinfer_cli("inspect", b), "artifacts[2].file", "symlink weights.bin")
    # a symlink that stays inside the bundle is fine
    (pkg / "weights.bin").unlink()
    (pkg / "weights.bin").symlink_to(b / "labels.txt")
    assert edgeinfer_cli("run", b, IMAGES[0]).returncode == 0


# ---------------------------------------------------------------- 2. no native code from data


MARKER_SO = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void ran(void) {
    const char *p = getenv("EDGEINFER_TEST_MARKER");
    if (p) { FILE *f = fopen(p, "w"); if (f) { fputs("native code ran\n", f); fclose(f); } }
}
"""


@pytest.fixture(scope="module")
def marker_library(tmp_path_factory) -> Path:
    """A shared library whose constructor writes the file named by $EDGEINFER_TEST_MARKER when loaded."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the marker library")
    d = tmp_path_factory.mktemp("so")
    (d / "marker.c").write_text(MARKER_SO)
    subprocess.run([cc, "-shared", "-fPIC", "-o", d / "libmarker.so", d / "marker.c"], check=True)
    return d / "libmarker.so"


def test_a_bundle_cannot_load_native_code(digits_tflite_bundle, marker_library, tmp_path):
    b = copy_bundle(digits_tflite_bundle, tmp_path)
    evil_profile = tmp_path / "evil.toml"
    evil_profile.write_text((ROOT / "device_profiles" / "raspberry-pi-4.toml").read_text().replace(
        'tflite_delegates = ["xnnpack"]', f'tflite_delegates = ["{marker_library}"]'))

    def poison(m):
        m["profile"]["runtime"].update(tflite_delegates=[str(marker_library)], onnx_providers=[str(marker_library)])
    edit_manifest(b, poison)
    marker = tmp_path / "ran.txt"
    env = dict(os.environ, EDGEINFER_TEST_MARKER=str(marker))
    run = [sys.executable, "-m", "edgeinfer.cli", "run", str(b), str(IMAGES[0])]
    proc = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0 and not marker.exists(), proc.stderr
    # nor through a profile name that is a path
    edit_manifest(b, lambda m: m["profile"].__setitem__("name", str(evil_profile)))
    proc = subprocess.run(run, capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0 and not marker.exists(), proc.stderr
    # the caller may load a library: the same file does run then (the check above could fail)
    proc = subprocess.run(run + ["--delegate", str(marker_library)], capture_output=True, text=True, cwd=ROOT, env=env)
    assert marker.exists(), proc.stderr


def test_profiles_name_delegates_never_library_paths(tmp_path):
    from edgeinfer.errors import EdgeInferError
    from edgeinfer.profiles import load_profile_file
    text = (ROOT / "device_profiles" / "raspberry-pi-4.toml").read_text()
    for bad in ('tflite_delegates = ["/opt/libevil.so"]', 'tflite_delegates = ["libevil.so"]',
                'onnx_providers = ["/opt/libevil.so"]'):
        key = bad.split(" =")[0]
        p = tmp_path / "raspberry-pi-4.toml"
        p.write_text("\n".join(bad if line.startswith(key) else line for line in text.splitlines()))
        with pytest.raises(EdgeInferError, match=key):
            load_profile_file(p)


def test_delegates_come_from_the_installed_profile(digits_tflite_bundle):
    from edgeinfer.predictor import backend_options_for
    m = json.loads((digits_tflite_bundle / "manifest.json").read_text())
    m["profile"]["runtime"]["tflite_delegates"] = ["edgetpu"]
    assert backend_options_for(m, "tflite").delegates == ["xnnpack"]        # raspberry-pi-4.toml as installed
    assert backend_options_for(m, "tflite", delegates=["gpu"]).delegates == ["gpu"]   # the caller decides
    m["profile"]["name"] = "../../etc/some-profile"
    assert backend_options_for(m, "tflite").delegates == [] and backend_options_for(m, "onnx").providers == []


# ---------------------------------------------------------------- 3. integrity on open


def test_altered_artifacts_are_refused_on_open(digits_bundle, tmp_path):
    b = copy_bundle(digits_bundle, tmp_path)
    art = b / "digits-int8.onnx"
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0x01      # one bit: same size, other sha256
    art.write_bytes(bytes(data))
    one_line_error(edgeinfer_cli("run", b, IMAGES[0], "--artifact", "digits-int8.onnx"), "digits-int8.onnx",
                   "sha256 mismatch", "--no-verify-hash")
    one_line_error(edgeinfer_cli("eval", b, DIGITS / "heldout", "--artifact", "digits-int8.onnx"), "sha256 mismatch")
    info = json.loads(edgeinfer_cli("inspect", b, "--json", check=True).stdout)
    assert info["integrity"] == {"digits-int8.onnx": "sha256 mismatch", "digits-fp32.onnx": "ok"}
    ok = edgeinfer_cli("run", b, IMAGES[0], "--artifact", "digits-int8.onnx", "--no-verify-hash")
    assert ok.returncode in (0, 2) and "sha256" not in ok.stderr       # the engine sees the file (a weight bit flipped)
    art.write_bytes(bytes(data[:-10]))
    one_line_error(edgeinfer_cli("run", b, IMAGES[0], "--artifact", "digits-int8.onnx"), "size mismatch")
    # without --artifact the next artifact that verifies is used, and the reason for skipping is not hidden
    assert edgeinfer_cli("run", b, IMAGES[0]).returncode == 0
    edit_manifest(b, lambda m: [a.pop("sha256") for a in m["artifacts"]])
    hand_made = edgeinfer_cli("run", b, IMAGES[0])
    assert hand_made.returncode == 0 and "records no sha256" in hand_made.stderr


def test_hash_is_cached_per_file_state(tmp_path):
    from edgeinfer import bundle
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 1000)
    first = bundle.cached_sha256(f)
    assert first == bundle.sha256_of(f) and bundle._stat_key(f) in bundle._DIGESTS
    f.write_bytes(b"y" * 1000)               # same size; ctime/mtime move on, so the cache misses
    assert bundle.cached_sha256(f) == bundle.sha256_of(f) != first


def test_signed_bundles(digits_bundle, tmp_path):
    pytest.importorskip("cryptography")
    from edgeinfer import EdgeInferError, Predictor
    b = copy_bundle(digits_bundle, tmp_path)
    edgeinfer_cli("keygen", tmp_path / "author", check=True)
    edgeinfer_cli("keygen", tmp_path / "other", check=True)
    assert oct((tmp_path / "author").stat().st_mode & 0o777) == "0o600"
    author, other = tmp_path / "author.pub", tmp_path / "other.pub"
    one_line_error(edgeinfer_cli("run", b, IMAGES[0], "--require-signature", author), "is not signed")
    edgeinfer_cli("sign", b, "--key", tmp_path / "author", check=True)
    assert edgeinfer_cli("run", b, IMAGES[0], "--require-signature", author).returncode == 0
    with pytest.raises(EdgeInferError, match="does not match other.pub"):
        Predictor(b, require_signature=other)
    labels = (b / "labels.txt").read_text()
    (b / "labels.txt").write_text(labels.replace("7", "1"))          # relabel after signing
    with pytest.raises(EdgeInferError, match="does not match author.pub"):
        Predictor(b, require_signature=author)
    (b / "labels.txt").write_text(labels)
    Predictor(b, require_signature=author)
    with pytest.raises(EdgeInferError, match="drop --no-verify-hash"):
        Predictor(b, require_signature=author, verify_hash=False)
    art = b / "digits-int8.onnx"                                       # artifacts: through the signed hashes
    art.write_bytes(art.read_bytes()[:-1] + b"\0")
    with pytest.raises(EdgeInferError, match="sha256 mismatch"):
        Predictor(b, artifact="digits-int8.onnx", require_signature=author)


# ---------------------------------------------------------------- 4. hostile model files


def _external(t, location: str) -> None:
    import onnx
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "16")):
        e = t.external_data.add()
        e.key, e.value = k, v


def _tiny_model(kind: str):
    """A valid model with one tensor pointing at '../secret.bin': in a subgraph, a sparse initializer, a
    tensor-list attribute, or a model-local function."""
    from onnx import TensorProto, helper, numpy_helper
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    w = numpy_helper.from_array(np.ones(4, np.float32), "w")
    opset = [helper.make_opsetid("", 17)]
    if kind == "subgraph":
        inner_w = numpy_helper.from_array(np.ones(4, np.float32), "inner_w")
        _external(inner_w, "../secret.bin")
        branch = helper.make_graph([helper.make_node("Add", ["x", "inner_w"], ["y"])], "b", [], [y], [inner_w])
        cond = numpy_helper.from_array(np.array(True), "c")
        g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)],
                              "g", [x], [y], [cond])
    elif kind == "sparse":
        values = numpy_helper.from_array(np.ones(2, np.float32), "w")
        _external(values, "../secret.bin")
        sp = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array([0, 2], np.int64), "w_idx"), [4])
        g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], sparse_initializer=[sp])
    elif kind == "function":
        t = numpy_helper.from_array(np.ones(4, np.float32), "k")
        _external(t, "../secret.bin")
        f = helper.make_function("local", "AddK", ["a"], ["b"],
                                 [helper.make_node("Constant", [], ["k"], value=t), helper.make_node("Add", ["a", "k"], ["b"])],
                                 opset)
        g = helper.make_graph([helper.make_node("AddK", ["x"], ["y"], domain="local")], "g", [x], [y])
        return helper.make_model(g, opset_imports=opset + [helper.make_opsetid("local", 1)], functions=[f])
    else:
        _external(w, "../secret.bin")
        g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "g", [x], [y], [w])
    return helper.make_model(g, opset_imports=opset)


@pytest.mark.parametrize("kind", ["initializer", "subgraph", "sparse", "function"])
def test_external_data_outside_the_model_folder_is_refused_everywhere(tmp_path, kind):
    import onnx
    from converters.load import all_tensors
    (tmp_path / "secret.bin").write_bytes(np.full(4, 7, np.float32).tobytes())
    (tmp_path / "m").mkdir()
    model = _tiny_model(kind)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in all_tensors(model))
    onnx.save(model, tmp_path / "m" / "model.onnx")
    one_line_error(edgeinfer_cli("inspect", tmp_path / "m" / "model.onnx"), "outside the model's folder", "'../secret.bin'")


def test_tflite_check_reads_the_schema_fields_litert_defines():
    fb = pytest.importorskip("ai_edge_litert.schema_py_generated")
    from edgeinfer.backends import tflite_check as c
    fields = {  # (class, accessor) -> our field number
        ("Model", "Version"): c.MODEL_VERSION, ("Model", "OperatorCodes"): c.MODEL_OPCODES,
        ("Model", "Subgraphs"): c.MODEL_SUBGRAPHS, ("Model", "Buffers"): c.MODEL_BUFFERS,
        ("Model", "MetadataBuffer"): c.MODEL_METADATA_BUFFER, ("Model", "Metadata"): c.MODEL_METADATA,
        ("Model", "ExternalBufferGroups"): c.MODEL_EXT_GROUPS, ("Model", "ExternalBuffers"): c.MODEL_EXT_BUFFERS,
        ("SubGraph", "Tensors"): c.SG_TENSORS, ("SubGraph", "Inputs"): c.SG_INPUTS, ("SubGraph", "Outputs"): c.SG_OUTPUTS,
        ("SubGraph", "Operators"): c.SG_OPERATORS, ("Tensor", "Shape"): c.T_SHAPE, ("Tensor", "Type"): c.T_TYPE,
        ("Tensor", "Buffer"): c.T_BUFFER, ("Tensor", "Quantization"): c.T_QUANT, ("Tensor", "Sparsity"): c.T_SPARSITY,
        ("Tensor", "ShapeSignature"): c.T_SHAPE_SIGNATURE, ("Tensor", "ExternalBuffer"): c.T_EXTERNAL,
        ("Operator", "OpcodeIndex"): c.OP_OPCODE, ("Operator", "Inputs"): c.OP_INPUTS, ("Operator", "Outputs"): c.OP_OUTPUTS,
        ("Operator", "BuiltinOptions"): c.OP_OPTIONS, ("Operator", "CustomOptions"): c.OP_CUSTOM,
        ("Operator", "Intermediates"): c.OP_INTERMEDIATES, ("Operator", "LargeCustomOptionsOffset"): c.OP_LARGE_OFF,
        ("Operator", "LargeCustomOptionsSize"): c.OP_LARGE_SIZE, ("Buffer", "Data"): c.BUF_DATA,
        ("Buffer", "Offset"): c.BUF_OFFSET, ("Buffer", "Size"): c.BUF_SIZE, ("QuantizationParameters", "Scale"): c.Q_SCALE,
        ("QuantizationParameters", "ZeroPoint"): c.Q_ZERO_POINT, ("QuantizationParameters", "QuantizedDimension"): c.Q_DIM,
        ("Metadata", "Buffer"): c.META_BUFFER,
    }
    import inspect as pyinspect
    import re
    for (cls, accessor), ours in fields.items():
        src = pyinspect.getsource(getattr(getattr(fb, cls), accessor))
        vt_offset = int(re.search(r"self\._tab\.Offset\((\d+)\)", src).group(1))
        assert (vt_offset - 4) // 2 == ours, (cls, accessor)
    sizes = {"FLOAT32": 4, "FLOAT16": 2, "INT32": 4, "UINT8": 1, "INT64": 8, "INT8": 1, "INT16": 2, "BOOL": 1,
             "FLOAT64": 8, "UINT32": 4, "UINT16": 2, "UINT64": 8, "INT4": "int4", "BFLOAT16": 2, "STRING": None}
    for name, size in sizes.items():
        assert c.ITEMSIZE[getattr(fb.TensorType, name)] == size, name


def _tensor_fields(buf: bytes):
    """Positions in a .tflite file: (shape vector start, buffer-index field) of subgraph 0's first constant tensor."""
    from edgeinfer.backends.tflite_check import _Table
    model = _Table(buf, struct.unpack_from("<I", buf, 0)[0], "model")
    for t in model.tables(2, "sg")[0].tables(0, "t"):
        if t.scalar(2, "<I"):
            return t
    raise AssertionError("no constant tensor")


def test_malformed_tflite_files_are_refused_before_the_engine(digits_tflite_bundle, tmp_path):
    from edgeinfer.backends.tflite_check import check_tflite_bytes, Malformed
    good = (digits_tflite_bundle / "digits-int8.tflite").read_bytes()
    check_tflite_bytes(good)
    check_tflite_bytes((digits_tflite_bundle / "digits-fp32.tflite").read_bytes())
    t = _tensor_fields(good)
    shape_start, rank = t.vector(0, 4)
    cases = {
        "truncated": good[: len(good) // 2],
        "identifier": good[:4] + b"XXXX" + good[8:],
        "root offset": struct.pack("<I", len(good) + 100) + good[4:],
        "buffer index": good[:t.pos + t._off(2, 4)] + struct.pack("<I", 10**6) + good[t.pos + t._off(2, 4) + 4:],
        "negative dim": good[:shape_start] + struct.pack("<i", -5) + good[shape_start + 4:],
        "huge dims": good[:shape_start] + struct.pack("<i", 2**30) * rank + good[shape_start + 4 * rank:],
        "data size": good[:shape_start] + struct.pack("<i", 3) + good[shape_start + 4:],
    }
    for name, data in cases.items():
        with pytest.raises(Malformed):
            check_tflite_bytes(data)
    b = copy_bundle(digits_tflite_bundle, tmp_path)
    (b / "digits-int8.tflite").write_bytes(cases["huge dims"])
    one_line_error(edgeinfer_cli("run", b, IMAGES[0], "--artifact", "digits-int8.tflite", "--no-verify-hash"),
                   "digits-int8.tflite is not a well-formed TFLite model")
    # inspect reads a .tflite without an interpreter: the malformed one is refused, the good one described
    one_line_error(edgeinfer_cli("inspect", b / "digits-int8.tflite"), "not a well-formed TFLite model")
    info = json.loads(edgeinfer_cli("inspect", digits_tflite_bundle / "digits-int8.tflite", "--json", check=True).stdout)
    assert info["structure"] == "ok" and info["subgraphs"][0]["inputs"][0]["shape"] == [1, 32, 32, 1]


# ---------------------------------------------------------------- 5. bounded memory


def test_predict_streams_in_batches(digits_bundle):
    from edgeinfer import Predictor
    pred = Predictor(digits_bundle, batch=3)
    consumed = []

    def images():
        for i in range(10):
            consumed.append(i)
            yield Image.open(IMAGES[i % len(IMAGES)]).convert("L")
    it = pred.iter_predict(images())
    next(it)
    assert len(consumed) == 3          # only the first batch was decoded before the first result
    assert len(list(it)) == 9 and len(consumed) == 10
    one = [r.class_ids[0] for r in Predictor(digits_bundle, batch=1).predict(IMAGES)]
    assert one == [r.class_ids[0] for r in pred.predict(IMAGES)]


def _bomb(path: Path, side: int = 12_000) -> Path:
    Image.new("1", (side, side)).save(path)     # ~18 KB on disk, 144 MP once decoded
    return path


def test_decompression_bombs_are_refused_and_skipped_in_calibration(digits_bundle, tmp_path):
    from converters.images import read_images
    from edgeinfer.preprocess import MAX_PIXELS, PreprocessConfig
    bomb = _bomb(tmp_path / "bomb.png")
    one_line_error(edgeinfer_cli("run", digits_bundle, bomb), "bomb.png", f"limit of {MAX_PIXELS}")
    cfg = PreprocessConfig.from_dict({"color": "gray", "resize": 32})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ok = [Path(shutil.copy(p, tmp_path)) for p in IMAGES[:2]]
        got = read_images([ok[0], bomb, ok[1]], tmp_path, cfg, (32, 32), "calib", progress=False)
    assert len(got.paths) == 2 and got.skipped == [bomb]
    assert any(f"1 over the pixel limit of {MAX_PIXELS}" in str(w.message) for w in caught)


def test_huge_images_are_reduced_early_and_boxes_still_map_to_original_pixels(tmp_path):
    from edgeinfer.preprocess import PreprocessConfig, load_image, preprocess_image
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (4500, 5000, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    im = load_image(tmp_path / "big.png", "rgb", (64, 64))
    assert im.size[0] < 1000 and im.info["edgeinfer_original_size"] == (5000, 4500)
    cfg = PreprocessConfig.from_dict({"resize_mode": "letterbox", "letterbox": {"size": 64}})
    _, t = preprocess_image(tmp_path / "big.png", cfg, (64, 64))
    assert t.orig_size == (5000, 4500)
    np.testing.assert_allclose(t.to_original(np.array([[0, 3.2, 64, 60.8]])), [[0, 0, 5000, 4500]], atol=60)
    wide = Image.fromarray(rng.integers(0, 65535, (4200, 4200)).astype(np.uint16))
    wide.save(tmp_path / "wide.png")
    g = load_image(tmp_path / "wide.png", "gray", (32, 32))
    assert g.mode == "L" and g.size[0] < 1000 and 100 < np.asarray(g).mean() < 155   # scaled from 16 bits, not clipped


# ---------------------------------------------------------------- 6. threads


@pytest.mark.parametrize("fixture", ["digits_bundle", "digits_tflite_bundle"])
def test_one_predictor_shared_by_threads_gives_the_single_thread_results(fixture, request):
    from edgeinfer import Predictor
    pred = Predictor(request.getfixturevalue(fixture))
    images = IMAGES * 3
    expected = [r.scores for r in pred.predict(images)]
    results: dict[int, list] = {}

    def work(k: int) -> None:
        order = images[k:] + images[:k]          # each thread its own order and batch sizes
        got = [r.scores for _, r in pred.iter_predict(order, batch=1 + k % 4)]
        results[k] = got[len(images) - k:] + got[:len(images) - k]
    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(6):
        for a, b in zip(results[k], expected):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- 9. nothing private travels


def test_manifests_hold_no_absolute_paths(digits_tflite_bundle):
    m = json.loads((digits_tflite_bundle / "manifest.json").read_text())
    assert m["calibration"]["source"] == "calib"
    text = json.dumps(m)
    for private in (str(ROOT), str(digits_tflite_bundle.parent), str(Path.home())):
        assert private not in text

    def strings(v):
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            for x in v.values():
                yield from strings(x)
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)
    assert not [s for s in strings(m) if os.path.isabs(s) or " /" in s]


# ---------------------------------------------------------------- 10. dependency bounds


def test_dependency_bounds_carry_their_reason():
    lines = (ROOT / "pyproject.toml").read_text().splitlines()
    for name in ("onnxruntime", "ai-edge-litert", "coremltools", "onnx"):
        capped = [ln for ln in lines if f'"{name}>=' in ln and ",<" in ln]
        for ln in capped:
            assert "#" in ln and ("tested" in ln or "private" in ln), ln
    assert any('"onnx>=1.21"' in ln and "CVE" in ln for ln in lines)
    for name in ("onnxruntime", "ai-edge-litert", "coremltools"):
        assert any(f'"{name}>=' in ln and ",<" in ln for ln in lines), f"{name} has no tested upper bound"
