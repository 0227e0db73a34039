"""A user's ONNX detector: class names from a file, and a clear error for a wrong output shape."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from imgfeat.cli import main  # noqa: E402
from imgfeat.models import create_detector  # noqa: E402


def _detector(path, output: np.ndarray) -> str:
    """An ONNX model taking (N, 3, 64, 64) images and returning `output` tiled over the batch."""
    const = helper.make_tensor("out", TensorProto.FLOAT, output.shape, output.ravel().tolist())
    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "rest"], ["reps"], axis=0),
        helper.make_node("Constant", [], ["value"], value=const),
        helper.make_node("Tile", ["value", "reps"], ["detections"]),
    ]
    inits = [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
             helper.make_tensor("one", TensorProto.INT64, [1], [1]),
             helper.make_tensor("rest", TensorProto.INT64, [output.ndim - 1], [1] * (output.ndim - 1))]
    graph = helper.make_graph(
        nodes, "det", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 64, 64])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


def test_class_names_file_names_the_labels(tmp_path, blob_folder):
    dets = np.array([[[4, 4, 40, 40, 0.9, 2], [0, 0, 10, 10, 0.2, 0]]], np.float32)
    model = _detector(tmp_path / "det.onnx", dets)
    (tmp_path / "names.txt").write_text("person\nbicycle\ncar\n")
    detector = create_detector(f"onnx:{model},labels={tmp_path / 'names.txt'}", runtime="onnxruntime")
    assert detector.label(2) == "car" and detector.label(7) == "7"
    out = detector([np.zeros((128, 128, 3), np.uint8)] * 2)
    assert len(out) == 2 and out[0][0, 5] == 2 and out[0][0, 4] == pytest.approx(0.9)
    assert main(["extract", str(blob_folder), "-o", str(tmp_path / "o"), "--detector",
                 f"onnx:{model},labels={tmp_path / 'names.txt'}", "--embedder", "test-tiny",
                 "--runtime", "onnxruntime", "--no-progress"]) == 0
    import pyarrow.parquet as pq

    labels = set(pq.read_table(tmp_path / "o", columns=["label"]).column("label").to_pylist())
    assert labels == {"car"}


def test_wrong_output_shape_is_one_clear_error(tmp_path, blob_folder, capsys):
    model = _detector(tmp_path / "bad.onnx", np.zeros((1, 10), np.float32))
    code = main(["extract", str(blob_folder), "-o", str(tmp_path / "o"), "--detector", f"onnx:{model}",
                 "--embedder", "test-tiny", "--runtime", "onnxruntime", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("imgfeat: error: the detector onnx:bad.onnx returned an output of shape [")
    assert "(images, detections, 6)" in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_missing_class_names_file_is_a_config_error(tmp_path):
    from imgfeat.errors import ConfigError

    model = _detector(tmp_path / "det.onnx", np.zeros((1, 3, 6), np.float32))
    with pytest.raises(ConfigError, match="class-names file"):
        create_detector(f"onnx:{model},labels={tmp_path / 'nope.txt'}", runtime="onnxruntime")


def test_resume_with_another_file_of_the_same_name_is_refused(tmp_path, blob_folder):
    """Same model name (onnx:det.onnx), other weights: rows would not match, so no resume."""
    from imgfeat.errors import OutputError
    import imgfeat

    dets = np.array([[[4, 4, 40, 40, 0.9, 2]]], np.float32)
    model = _detector(tmp_path / "det.onnx", dets)
    options = {"detector": f"onnx:{model}", "embedder": "test-tiny", "runtime": "onnxruntime",
               "workers": 0, "progress": False, "shard_size": 3}
    imgfeat.extract(blob_folder, tmp_path / "out", **options)
    _detector(tmp_path / "det.onnx", dets * 0.5)  # new weights under the old name
    with pytest.raises(OutputError, match="another detector file"):
        imgfeat.extract(blob_folder, tmp_path / "out", **options)
    assert imgfeat.extract(blob_folder, tmp_path / "out", overwrite=True, **options).ok == 7
