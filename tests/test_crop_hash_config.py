import os

import numpy as np
import pytest

import imgfeat
from imgfeat.config import PipelineConfig
from imgfeat.crop import crop, expand_box, scale_box, select_main
from imgfeat.errors import ConfigError, MissingExtra, ModelUnavailable, UnknownModel
from imgfeat.models import create_detector, create_embedder, create_hasher
from imgfeat.models.hashing import hamming_distance, orthogonal_projection


DETS = np.array([
    [0, 0, 10, 10, 0.9, 1],     # small, confident
    [0, 0, 100, 100, 0.6, 2],   # large, less confident
    [5, 5, 50, 50, 0.2, 3],     # below threshold
], dtype=np.float32)


def test_select_main_by_score_or_score_times_area():
    assert select_main(DETS, 0.3, "score") == 0
    assert select_main(DETS, 0.3, "score_area") == 1
    assert select_main(DETS, 0.95) is None
    assert select_main(np.zeros((0, 6), np.float32), 0.1) is None


def test_select_main_ignores_big_box_under_threshold():
    dets = np.array([[0, 0, 10, 10, 0.5, 0], [0, 0, 500, 500, 0.1, 1]], np.float32)
    assert select_main(dets, 0.3, "score_area") == 0


def test_expand_box_adds_margin_and_clips():
    assert expand_box(np.array([10, 20, 30, 60]), 0.1, 100, 100) == (8, 16, 32, 64)
    assert expand_box(np.array([-5, -5, 120, 90]), 0.5, 100, 80) == (0, 0, 100, 80)
    # a degenerate box still yields at least one pixel
    left, top, right, bottom = expand_box(np.array([99.5, 79.5, 99.5, 79.5]), 0.0, 100, 80)
    assert right - left >= 1 and bottom - top >= 1 and right <= 100 and bottom <= 80


def test_crop_and_scale_box():
    image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    assert crop(image, (2, 3, 7, 9)).shape == (6, 5, 3)
    assert np.allclose(scale_box(np.array([1, 2, 3, 4, 0.5, 0]), 2.0, 3.0), [2, 6, 6, 12])


def test_projection_is_orthonormal_and_seeded():
    p = orthogonal_projection(64, 32, seed=7)
    assert np.allclose(p.T @ p, np.eye(32), atol=1e-5)
    assert np.array_equal(p, orthogonal_projection(64, 32, seed=7))
    assert not np.allclose(p, orthogonal_projection(64, 32, seed=8))


def test_codes_are_packed_and_preserve_similarity():
    rng = np.random.default_rng(0)
    hasher = create_hasher("rproj", dim=128, bits=256, seed=0)
    x = rng.standard_normal((50, 128)).astype(np.float32)
    near = x + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    codes, near_codes = hasher(x), hasher(near)
    assert codes.shape == (50, 32) and codes.dtype == np.uint8
    near_d = np.mean([hamming_distance(a, b) for a, b in zip(codes, near_codes)])
    far_d = np.mean([hamming_distance(codes[i], codes[(i + 1) % 50]) for i in range(50)])
    assert near_d < 20 < 100 < far_d  # random pairs differ in about half of 256 bits
    assert hasher.name == "rproj-256-s0"
    with pytest.raises(ConfigError):
        create_hasher("rproj", dim=128, bits=12)
    with pytest.raises(ConfigError, match="unknown hasher"):
        create_hasher("nope", dim=128, bits=64)


@pytest.mark.parametrize("dim, bits, seed", [(1280, 256, 0), (1280, 64, 2), (512, 256, 1), (64, 128, 0)])
def test_projection_equals_the_full_qr_definition(dim, bits, seed):
    # codes written before the reduced QR must stay valid: same planes, bit for bit
    size = max(dim, bits)
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((size, size)))
    q *= np.sign(np.diag(r))
    expected = np.ascontiguousarray(q[:dim, :bits], dtype=np.float32)
    np.testing.assert_array_equal(orthogonal_projection(dim, bits, seed), expected)


def test_model_batch_sizes_follow_the_device_unless_set():
    cpu = PipelineConfig()
    assert (cpu.detect_batch_size, cpu.embed_batch_size, cpu.chunk_size) == (1, 16, 16)
    cuda = PipelineConfig.from_options(device="cuda")
    assert (cuda.detect_batch_size, cuda.embed_batch_size, cuda.chunk_size) == (16, 64, 64)
    fixed = PipelineConfig.from_options(detect_batch_size=8, embed_batch_size=4, device="cuda")
    assert (fixed.detect_batch_size, fixed.embed_batch_size, fixed.chunk_size) == (8, 4, 8)
    with pytest.raises(ConfigError, match="detector batch_size"):
        PipelineConfig.from_options(detect_batch_size=-1)


def test_config_from_flat_options():
    config = PipelineConfig.from_options(batch_size=4, detector="none", embedder="test-tiny",
                                         workers=0, dtype="float16", embed_batch_size=16)
    assert config.detect.batch_size == 4 and config.embed.batch_size == 16
    assert not config.detect.enabled and config.embed.model == "test-tiny"
    assert config.run.workers == 0 and config.embed.dtype == "float16"
    with pytest.raises(ConfigError, match="unknown option 'batchsize'"):
        PipelineConfig.from_options(batchsize=3)
    with pytest.raises(ConfigError, match="code_bits"):
        PipelineConfig.from_options(code_bits=10)
    with pytest.raises(ConfigError, match="device"):
        PipelineConfig.from_options(device="tpu")


def test_registry_errors_say_what_to_do(tmp_path):
    with pytest.raises(UnknownModel, match="centernet-mbv3.*onnx:PATH"):
        create_detector("yolo-nope")
    with pytest.raises(UnknownModel, match="mobilenet-v2"):
        create_embedder("nope")
    with pytest.raises(ModelUnavailable, match="not found"):
        create_embedder(f"onnx:{tmp_path / 'missing.onnx'}")
    with pytest.raises((MissingExtra, ModelUnavailable)) as info:
        create_embedder("timm:resnet50")
    assert "timm" in str(info.value)


def test_public_api_is_pinned():
    assert sorted(imgfeat.__all__) == sorted([
        "ConfigError", "DecodeConfig", "Decoded", "DetectConfig", "EmbedConfig", "Features",
        "ImgfeatError", "Item", "MissingExtra", "ModelUnavailable", "OutputError", "Pipeline",
        "PipelineConfig", "ReadDecode", "RunConfig", "RunReport", "SourceError", "TooManyErrors",
        "UnknownModel", "__version__", "create_detector", "create_embedder", "create_hasher",
        "crop", "decode_image", "dedup", "expand_box", "extract", "finetune", "index", "info", "load_index",
        "open_source", "read_features", "search", "select_main",
    ])
    for name in imgfeat.__all__:
        assert hasattr(imgfeat, name), name


def test_query_configs_use_one_stream_with_every_core():
    # search and serve embed one batch at a time: the extraction's streams must not leave
    # them one thread per call
    from imgfeat.retrieval.search import query_config
    from imgfeat.serve.service import ServeConfig, pipeline_config_for

    extracted = PipelineConfig.from_options(streams=3, detector="test-blob", embedder="test-tiny").to_dict()
    for config in (query_config(extracted), pipeline_config_for(extracted, ServeConfig())):
        assert config.inference_streams == 1 and config.inference_threads == 0
    assert PipelineConfig.from_options(streams=3).inference_threads == max(1, (os.cpu_count() or 1) // 3)
