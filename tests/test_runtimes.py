"""Runtimes: selection, the OpenVINO wrapper, and the accuracy gate against onnxruntime float32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgfeat
from imgfeat.config import PipelineConfig, RunConfig
from imgfeat.crop import box_iou
from imgfeat.errors import ConfigError
from imgfeat.models import centernet, create_embedder
from imgfeat.models.runtimes import (
    OnnxModel, create_runtime, openvino_available, openvino_has_bf16, resolve_runtime,
)

from conftest import SAMPLES

DETECTOR_ONNX = Path(centernet.__file__).parent / "weights" / centernet.WEIGHTS_FILE
needs_openvino = pytest.mark.skipif(not openvino_available(), reason="openvino not installed")


def test_resolve_runtime_choices():
    assert resolve_runtime("onnxruntime") == "onnxruntime"
    assert resolve_runtime("auto") == ("openvino" if openvino_has_bf16() else "onnxruntime")
    assert resolve_runtime("auto", "cuda") == "onnxruntime"
    with pytest.raises(ConfigError, match="unknown runtime"):
        resolve_runtime("tensorrt")
    with pytest.raises(ConfigError, match="CUDA"):
        resolve_runtime("openvino", "cuda")


def test_run_config_validates_runtime():
    assert RunConfig().runtime == "auto"
    assert PipelineConfig.from_options(runtime="onnxruntime").run.runtime == "onnxruntime"
    with pytest.raises(ConfigError, match="runtime must be"):
        RunConfig(runtime="tvm")
    with pytest.raises(ConfigError, match="cuda"):
        RunConfig(device="cuda", runtime="openvino")


def test_cli_has_runtime_flag(capsys):
    from imgfeat.cli import main

    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    assert "--runtime" in capsys.readouterr().out


@needs_openvino
def test_openvino_batch_sizes_match_onnxruntime_on_raw_tensors():
    rng = np.random.default_rng(0)
    batch = rng.uniform(0, 255, (3, 512, 512, 3)).astype(np.float32)
    reference = OnnxModel(DETECTOR_ONNX, threads=1)
    model = create_runtime(DETECTOR_ONNX, runtime="openvino", threads=1)
    assert model.fixed_batch is None and model.describe().startswith("openvino")
    names = list(centernet.OUTPUT_NAMES)
    for size in (1, 3):  # two batch sizes (3 runs padded to 4)
        expected = reference.run(batch[:size], names)
        got = model.run(batch[:size], names)
        assert [g.shape for g in got] == [e.shape for e in expected]
        np.testing.assert_allclose(got[0], expected[0], atol=2e-2)
    first = model.run(batch[:1], names)[0]
    model.run(batch[1:2], names)
    assert not np.array_equal(first, model.run(batch[1:2], names)[0])  # outputs are copies


@pytest.mark.parametrize("runtime", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_runtimes_serve_concurrent_callers(runtime):
    # the local runner's inference streams share one model: calls from several threads
    # at once must each get their own input's result
    from concurrent.futures import ThreadPoolExecutor

    embedder = create_embedder("mobilenet-v2", runtime=runtime, threads=1)
    rng = np.random.default_rng(1)
    batches = [rng.uniform(-2, 2, (2, 3, 224, 224)).astype(np.float32) for _ in range(6)]
    expected = [embedder.model.run(b)[0] for b in batches]
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda b: embedder.model.run(b)[0], batches * 2))
    for i, result in enumerate(got):
        np.testing.assert_allclose(result, expected[i % len(batches)], rtol=1e-5, atol=1e-5)


@needs_openvino
def test_manifest_records_the_runtime(tmp_path, blob_folder):
    # the tiny test-* models have no runtime: the real embedder, no detector, two images
    out = tmp_path / "out"
    imgfeat.extract(blob_folder, out, detector="none", runtime="openvino", workers=0,
                    progress=False, limit=2)
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["model_digests"]["runtime"].startswith("openvino")
    assert manifest["config"]["run"]["runtime"] == "openvino"


def _photos() -> list[np.ndarray]:
    paths = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    images = []
    for path in paths:
        with Image.open(path) as image:
            image.thumbnail((1024, 1024))
            images.append(np.asarray(image.convert("RGB")))
    return images


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(box_iou(np.asarray(a, np.float64), np.asarray(b, np.float64)[None])[0])


@pytest.mark.gpu
def test_cuda_provider_runs_the_detector():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("no CUDA provider (onnxruntime-gpu and an NVIDIA GPU are needed)")
    model = create_runtime(DETECTOR_ONNX, runtime="auto", device="cuda")
    assert "CUDA" in model.describe()
    heads = model.run(np.zeros((2, 512, 512, 3), np.float32), list(centernet.OUTPUT_NAMES))
    assert heads[0].shape == (2, 128, 128, 80)


def test_a_cpu_without_bf16_flags_resolves_auto_without_asking_openvino(monkeypatch):
    from imgfeat.models import runtimes

    def must_not_be_asked():
        raise AssertionError("openvino was imported to resolve a CPU without native bf16")

    monkeypatch.setattr(runtimes, "openvino_available", must_not_be_asked)
    monkeypatch.setattr(runtimes, "cpu_flags", lambda: {"fpu", "avx2", "avx512f"})
    runtimes.openvino_has_bf16.cache_clear()
    try:
        assert runtimes.openvino_has_bf16() is False
        assert resolve_runtime("auto") == "onnxruntime"
        # flags that show native bf16: OpenVINO decides (here: not installed)
        monkeypatch.setattr(runtimes, "cpu_flags", lambda: {"avx512_bf16"})
        monkeypatch.setattr(runtimes, "openvino_available", lambda: False)
        runtimes.openvino_has_bf16.cache_clear()
        assert runtimes.openvino_has_bf16() is False
    finally:
        runtimes.openvino_has_bf16.cache_clear()
