"""Fine-tuning on a tiny random CNN ("test-cnn", 32x32 input) and a few dozen generated images:
self-supervised and supervised runs, the ONNX export against the torch model, 1 vs 2
data-parallel workers, and a training killed with SIGKILL that resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="fine-tuning needs torch: pip install 'imgfeat[torch]'")
pytest.importorskip("onnx", reason="the ONNX export needs onnx: pip install 'imgfeat[torch]'")

from imgfeat.errors import ConfigError  # noqa: E402
from imgfeat.tuning.config import FinetuneConfig  # noqa: E402
from imgfeat.tuning.data import open_training_data  # noqa: E402
from imgfeat import finetune  # noqa: E402  (the top-level API, as users call it)

SRC = Path(__file__).resolve().parent.parent / "src"
TINY = {"backbone": "test-cnn", "batch_size": 8, "loader_workers": 0, "threads": 1, "checkpoint_every": 0,
        "progress": False, "head_dim": 16}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """24 images: a coloured square on a coloured ground, three label classes by square colour;
    labels.csv (path,label) sits beside the folder."""
    root = tmp_path_factory.mktemp("finetune")
    folder = root / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    colours = [(220, 40, 40), (40, 200, 60), (40, 60, 220)]
    for i in range(24):
        image = np.full((48, 64, 3), rng.integers(0, 255, 3), np.uint8)
        x, y = rng.integers(0, 40), rng.integers(0, 24)
        image[y:y + 24, x:x + 24] = colours[i % 3]
        image[rng.integers(0, 44):, rng.integers(0, 60)] = 255  # a line: images differ in detail
        Image.fromarray(image).save(folder / f"img{i:02d}.png")
        rows.append(f"photos/img{i:02d}.png,class{i % 3}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder


def _state(output: Path) -> dict:
    return torch.load(output / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)


def test_selfsup_trains_exports_and_onnx_gives_the_torch_vectors(photos, tmp_path):
    from imgfeat.tuning.model import FinetuneNet, input_spec
    from imgfeat.tuning.train import load_trained
    from imgfeat.models import create_embedder
    from imgfeat.models.preprocess import l2_normalize, to_tensor

    output = tmp_path / "tuned"
    card = finetune(photos, output, steps=4, cut_at="features.1", freeze_to="features.0",
                    loader_workers=1, holdout=0.25, **{k: v for k, v in TINY.items() if k != "loader_workers"})
    assert card["training"]["steps"] == 4 and card["data"]["heldout"] == 6
    assert all(np.isfinite(json.loads((output / "train_log.json").read_text())["losses"]))
    evaluation = json.loads((output / "evaluation.json").read_text())
    for when in ("before", "after"):
        assert 0.0 <= evaluation[when]["neardup"]["top1"] <= 1.0
        assert evaluation[when]["neardup"]["queries"] == 6 * 9  # every augment edit + a chain
    assert (output / "MODEL_CARD.md").read_text().startswith("# Fine-tuned imgfeat embedder")

    # cut after features.1, features.0 frozen, features.1 and the head trained
    tuned = load_trained(FinetuneConfig(source=str(photos), output=str(output), cut_at="features.1",
                                        freeze_to="features.0", **TINY))
    torch.manual_seed(0)
    initial = FinetuneNet("test-cnn", "features.1", "features.0", 16)
    assert len(tuned.features) == 2 and tuned.dim == 16
    assert torch.equal(tuned.features[0][0].weight, initial.features[0][0].weight)
    assert not torch.allclose(tuned.features[1][0].weight, initial.features[1][0].weight)
    assert not torch.allclose(tuned.head.weight, initial.head.weight)

    # the exported embedder reads its recorded 32x32 preprocessing and matches the torch model
    embedder = create_embedder(f"onnx:{output / 'embedder.onnx'}", runtime="onnxruntime")
    spec = input_spec("test-cnn")
    assert embedder.spec == spec and embedder.dim == 16
    crops = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(photos.iterdir())[:5]]
    with torch.no_grad():
        expected = l2_normalize(tuned(torch.from_numpy(to_tensor(crops, spec))).numpy())
    np.testing.assert_allclose(embedder(crops), expected, atol=1e-4)


def test_supervised_arcface_and_softmax_use_the_label_column(photos, tmp_path):
    labels = photos.parent / "labels.csv"
    card = finetune(labels, tmp_path / "arc", mode="supervised", label_column="label", loss="arcface",
                    steps=3, holdout=0.25, **TINY)
    assert card["data"]["classes"] == 3 and card["training"]["steps"] == 3
    scores = card["evaluation"]["after"]["labels"]
    assert scores["queries"] == 6 and 0.0 < scores["map"] <= 1.0
    assert _state(tmp_path / "arc")["model"]["objective.centres"].shape == (3, 16)

    card = finetune(labels, tmp_path / "soft", mode="supervised", label_column="label", loss="softmax",
                    steps=2, holdout=0.0, detector="test-blob", **TINY)
    assert "skipped" in card["evaluation"]  # nothing held out: nothing to score, said so
    assert _state(tmp_path / "soft")["model"]["objective.classifier.weight"].shape == (3, 16)


def test_views_come_from_the_detectors_main_object(photos):
    from imgfeat.tuning.data import ViewDataset
    from imgfeat.tuning.model import input_spec

    config = FinetuneConfig(source=str(photos), output="unused", holdout=0.0, **TINY)
    data = open_training_data(config)
    whole = ViewDataset(data.reader, data.train, input_spec("test-cnn"), 2, None, 0, 512)
    cropped = ViewDataset(data.reader, data.train, input_spec("test-cnn"), 2, None, 0, 512, detector="test-blob")
    from imgfeat.crop import expand_box
    from imgfeat.models.testing import BlobDetector

    for index in range(3):
        full, main = whole._image(index), cropped._image(index)
        assert full.shape == (48, 64, 3)
        left, top, right, bottom = expand_box(BlobDetector()([full])[0][0], 0.05, 64, 48)  # extract's margin
        assert main.shape == (bottom - top, right - left, 3) and main.size < full.size
        np.testing.assert_array_equal(main, full[top:bottom, left:right])
    sample = cropped[(0, 1)]
    assert [tuple(v.shape) for v in sample["views"]] == [(3, 32, 32), (3, 32, 32)]


def test_bad_settings_fail_at_once_with_a_reason(photos, tmp_path):
    with pytest.raises(ConfigError, match="label column"):
        FinetuneConfig(source=str(photos), output=str(tmp_path), mode="supervised")
    with pytest.raises(ConfigError, match="split evenly"):
        FinetuneConfig(source=str(photos), output=str(tmp_path), batch_size=9, workers=2)
    with pytest.raises(ConfigError, match="features.0 ... features.2"):
        finetune(photos, tmp_path / "a", cut_at="features.7", steps=1, **TINY)
    with pytest.raises(ConfigError, match="past cut_at"):
        finetune(photos, tmp_path / "b", cut_at="features.0", freeze_to="features.1", steps=1, **TINY)
    with pytest.raises(ConfigError, match="unknown detector"):
        finetune(photos, tmp_path / "d", steps=1, detector="no-such-detector", **TINY)
    finetune(photos, tmp_path / "c", steps=1, holdout=0.0, **TINY)
    with pytest.raises(ConfigError, match="different training.*lr"):
        finetune(photos, tmp_path / "c", steps=2, holdout=0.0, lr=0.5, **TINY)


@pytest.mark.slow  # two spawned processes importing torch: ~25 s on 2 busy cores
def test_two_workers_give_what_one_gives(photos, tmp_path):
    """DistributedDataParallel on 2 gloo processes with the same seed and global batch: the
    same losses and weights as 1 process, up to floating-point noise."""
    from imgfeat.tuning.train import train

    runs = {}
    for workers in (1, 2):
        config = FinetuneConfig(source=str(photos), output=str(tmp_path / f"w{workers}"), steps=3,
                                holdout=0.0, workers=workers, **TINY)
        log = train(config, open_training_data(config))
        assert log.workers == workers and log.steps == 3
        runs[workers] = (log.losses, _state(tmp_path / f"w{workers}")["model"])
    np.testing.assert_allclose(runs[2][0], runs[1][0], rtol=1e-5)
    for name, weight in runs[1][1].items():
        np.testing.assert_allclose(runs[2][1][name].numpy(), weight.numpy(), atol=1e-5, err_msg=name)
    assert runs[1][0][0] != runs[1][0][-1]  # it trained


@pytest.mark.slow  # three training runs, two of them fresh processes: ~25 s on 2 busy cores
def test_killed_training_resumes_from_its_checkpoint(photos, tmp_path):
    """SIGKILL after the first checkpoint; the same command resumes there, reaches the same
    step count, and ends with the weights of a run that was never interrupted."""
    steps = 40
    output = tmp_path / "killed"
    command = [sys.executable, "-m", "imgfeat.cli", "finetune", str(photos), "-o", str(output),
               "--backbone", "test-cnn", "--head-dim", "16", "--steps", str(steps), "--batch-size", "8",
               "--checkpoint-every", "2", "--loader-workers", "0", "--threads", "1", "--holdout", "0",
               "--no-progress"]
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    errors = tmp_path / "stderr.txt"
    with open(errors, "wb") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    checkpoint = output / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, errors.read_text()
    killed_at = _state(output)["step"]
    assert 0 < killed_at < steps

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    log = json.loads((output / "train_log.json").read_text())
    assert log["resumed_from"] >= killed_at and log["steps"] == steps and len(log["losses"]) == steps

    from imgfeat.tuning.train import train

    config = FinetuneConfig(source=str(photos), output=str(tmp_path / "whole"), steps=steps, holdout=0.0, **TINY)
    train(config, open_training_data(config))
    resumed, whole = _state(output)["model"], _state(tmp_path / "whole")["model"]
    for name, weight in whole.items():
        np.testing.assert_allclose(resumed[name].numpy(), weight.numpy(), atol=1e-5, err_msg=name)


def test_recorded_preprocessing_round_trips_and_is_absent_from_other_models(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from imgfeat.models.onnx_meta import recorded_spec, spec_from_json, spec_to_json
    from imgfeat.models.preprocess import InputSpec

    spec = InputSpec(size=(40, 48), layout="NHWC", scale=1.0, mean=None, std=None, interpolation="linear")
    assert spec_from_json(spec_to_json(spec)) == spec
    with pytest.raises(ConfigError, match="recorded preprocessing"):
        spec_from_json('{"size": [1]}')
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "plain.onnx")
    assert recorded_spec(tmp_path / "plain.onnx") is None


def test_cli_registers_finetune():
    from imgfeat.cli import build_parser

    args = build_parser().parse_args(["finetune", "photos/", "-o", "out/", "--workers", "2",
                                      "--cut-at", "features.14", "--mode", "supervised", "--label-column", "sku"])
    assert args.command == "finetune" and args.workers == 2 and args.cut_at == "features.14"


@pytest.mark.spark
@pytest.mark.slow  # a local SparkSession and two torchrun processes
# TorchDistributor leaves a pipe of its torchrun subprocess for the garbage collector
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_spark_torch_distributor_gives_what_one_worker_gives(photos, tmp_path):
    pytest.importorskip("pyspark", reason="--engine spark needs pyspark: pip install 'imgfeat[spark]'")
    from imgfeat.tuning.train import train

    runs = {}
    for engine, workers in (("local", 1), ("spark", 2)):
        config = FinetuneConfig(source=str(photos), output=str(tmp_path / engine), steps=2, holdout=0.0,
                                workers=workers, engine=engine, **TINY)
        log = train(config, open_training_data(config))
        assert log.workers == workers and log.steps == 2
        runs[engine] = log.losses
    np.testing.assert_allclose(runs["spark"], runs["local"], rtol=1e-5)


@pytest.mark.ray
@pytest.mark.slow  # a local Ray and two Ray Train workers
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")
@pytest.mark.filterwarnings("ignore::FutureWarning:ray")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ray_train_gives_what_one_worker_gives(photos, tmp_path):
    ray = pytest.importorskip("ray", reason="--engine ray needs ray: pip install 'imgfeat[ray]'")
    pytest.importorskip("ray.train", reason="--engine ray needs Ray Train")
    from imgfeat.tuning.train import train

    runs = {}
    for engine, workers in (("local", 1), ("ray", 2)):
        config = FinetuneConfig(source=str(photos), output=str(tmp_path / engine), steps=2, holdout=0.0,
                                workers=workers, engine=engine, **TINY)
        log = train(config, open_training_data(config))
        assert log.workers == workers and log.steps == 2
        runs[engine] = log.losses
    np.testing.assert_allclose(runs["ray"], runs["local"], rtol=1e-5)
    assert not ray.is_initialized()  # the Ray it started is stopped again
