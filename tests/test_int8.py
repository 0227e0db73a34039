"""INT8: choosing it, quantising a model once (cached, atomic), and an int8 run end to end.

The accuracy gates of int8 against onnxruntime fp32 are in test_precision.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import imgfeat
from imgfeat.config import PipelineConfig, RunConfig
from imgfeat.errors import ConfigError, OutputError
from imgfeat.models import create_embedder, quantize
from imgfeat.models.runtimes import OnnxModel, create_runtime, openvino_available, resolve_compute

from conftest import SAMPLES

onnx = pytest.importorskip("onnx", reason="int8 quantisation needs onnx (pip install 'imgfeat[int8]')")


def _tiny_conv_model(path) -> None:
    """A float ONNX file: Conv (3 -> 8 channels) + Relu + Conv (8 -> 4), NCHW, any batch/size."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def test_int8_choices():
    assert resolve_compute("auto", "int8") == ("onnxruntime", "int8")
    assert resolve_compute("onnxruntime", "int8") == ("onnxruntime", "int8")
    assert resolve_compute("auto", "auto")[1] != "int8"  # auto never quantises (test_precision gates)
    if openvino_available():
        assert resolve_compute("openvino", "int8") == ("openvino", "int8")
    with pytest.raises(ConfigError, match="int8 runs on the CPU"):
        resolve_compute("auto", "int8", "cuda")
    with pytest.raises(ConfigError, match="int8 runs on the CPU"):
        RunConfig(device="cuda", precision="int8")
    assert PipelineConfig.from_options(precision="int8").run.precision == "int8"


def test_quantised_file_is_cached_keyed_and_written_whole(tmp_path):
    fp32 = tmp_path / "tiny.onnx"
    _tiny_conv_model(fp32)
    rng = np.random.default_rng(1)
    batches = [rng.uniform(0, 1, (2, 3, 16, 24)).astype(np.float32),
               rng.uniform(0, 1, (1, 3, 32, 16)).astype(np.float32)]  # shapes may differ
    folder = tmp_path / "int8"
    path = quantize.quantized_model(fp32, batches, folder=folder)
    assert path.parent == folder and path.name.startswith("tiny-int8-")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    mtime = path.stat().st_mtime_ns
    assert quantize.quantized_model(fp32, batches, folder=folder) == path  # cached, not redone
    assert path.stat().st_mtime_ns == mtime
    other = quantize.quantized_model(fp32, batches[:1], folder=folder)  # other calibration
    assert other != path
    assert sorted(p.name for p in folder.iterdir()) == sorted([path.name, other.name])  # no temp files
    # the int8 file runs, says so, and stays close to the float one on its calibration input
    reference = OnnxModel(fp32).run(batches[0])[0]
    model = OnnxModel(path, precision="int8")
    assert model.describe().endswith(" int8") and model.digest != OnnxModel(fp32).digest
    got = model.run(batches[0])[0]
    assert np.abs(got - reference).max() <= 0.05 * np.abs(reference).max()
    if openvino_available():
        from imgfeat.models.runtimes import OpenVinoModel

        ov = OpenVinoModel(path, precision="int8")
        assert ov.describe().endswith("CPU int8")
        assert np.abs(ov.run(batches[0])[0] - reference).max() <= 0.05 * np.abs(reference).max()


def test_int8_needs_calibration(tmp_path, monkeypatch):
    fp32 = tmp_path / "tiny.onnx"
    _tiny_conv_model(fp32)
    with pytest.raises(ConfigError, match="no calibration inputs"):
        create_runtime(fp32, precision="int8")
    with pytest.raises(ConfigError, match="needs at least one calibration batch"):
        quantize.quantized_model(fp32, [])
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(quantize.CALIBRATION_ENV, str(empty))
    with pytest.raises(ConfigError, match="IMGFEAT_CALIBRATION"):
        quantize.calibration_photos()


def test_torch_embedders_refuse_int8():
    with pytest.raises(ConfigError, match="does not quantise"):
        create_embedder("timm:resnet18", precision="int8")


def test_calibration_photos_are_the_samples():
    photos = quantize.calibration_photos()
    assert len(photos) == len([p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png")]) >= 10
    assert all(p.ndim == 3 and p.shape[2] == 3 and max(p.shape[:2]) <= 1024 for p in photos)


@pytest.mark.slow
def test_extract_int8_end_to_end(tmp_path):
    """The real networks in int8 (quantised once into IMGFEAT_HOME, then cached): the manifest
    records int8 and the int8 files' digests, and a resume in fp32 is refused."""
    out = tmp_path / "out"
    imgfeat.extract(SAMPLES, out, precision="int8", limit=2, workers=0, progress=False)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert (manifest["config"]["run"]["runtime"], manifest["config"]["run"]["precision"]) == ("onnxruntime", "int8")
    assert manifest["model_digests"]["runtime"].endswith(" int8")
    fp32 = imgfeat.extract(SAMPLES, tmp_path / "fp32", precision="fp32", limit=2, workers=0, progress=False)
    assert fp32.processed == 2
    fp32_digests = json.loads((tmp_path / "fp32" / "_manifest.json").read_text())["model_digests"]
    assert manifest["model_digests"]["embedder"] != fp32_digests["embedder"]
    assert manifest["model_digests"]["detector"] != fp32_digests["detector"]
    before = sorted(os.listdir(out))
    with pytest.raises(OutputError, match="computed with onnxruntime int8.*precision fp32"):
        imgfeat.extract(SAMPLES, out, precision="fp32", workers=0, progress=False)
    assert sorted(os.listdir(out)) == before
    # resuming with auto keeps int8
    imgfeat.extract(SAMPLES, out, limit=3, workers=0, progress=False)
    assert json.loads((out / "_manifest.json").read_text())["config"]["run"]["precision"] == "int8"


def test_queries_of_an_int8_index_compute_in_int8():
    from imgfeat.retrieval.search import query_config

    index_config = PipelineConfig.from_options(runtime="onnxruntime", precision="int8").to_dict()
    run = query_config(index_config).run
    assert (run.runtime, run.precision) == ("onnxruntime", "int8")


def test_cli_offers_int8(capsys):
    from imgfeat.cli import main

    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    assert "int8" in capsys.readouterr().out
