"""Precision: resolved once, recorded in the manifest, kept by resumes and by queries; and
the accuracy gate of every (runtime, precision) against onnxruntime fp32 on real photos."""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pytest

import imgfeat
from imgfeat.config import PipelineConfig, RunConfig
from imgfeat.errors import ConfigError, OutputError
from imgfeat.models import create_detector, create_embedder, create_hasher, runtimes
from imgfeat.models.runtimes import openvino_available, openvino_has_bf16, resolve_compute
from imgfeat.retrieval.search import query_config
from imgfeat.runners.base import compute_for_output, recorded_compute
from imgfeat.serve.service import ServeConfig, pipeline_config_for

from conftest import FAST_MODELS
from test_runtimes import _iou, _photos


def _manifest(out) -> dict:
    return json.loads((out / "_manifest.json").read_text())


def test_resolve_compute_choices():
    native = openvino_has_bf16()
    assert resolve_compute("auto", "auto") == (("openvino", "bf16") if native else ("onnxruntime", "fp32"))
    assert resolve_compute("onnxruntime", "auto") == ("onnxruntime", "fp32")
    assert resolve_compute("auto", "auto", "cuda") == ("onnxruntime", "fp32")
    assert resolve_compute("auto", "fp32")[1] == "fp32"
    with pytest.raises(ConfigError, match="onnxruntime computes these models in fp32"):
        resolve_compute("onnxruntime", "bf16")
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_compute("auto", "int4")


def test_bf16_refused_on_a_cpu_without_it(monkeypatch):
    # an AVX2-only CPU (an engine executor of another kind, a CI machine): bf16 is refused,
    # "auto" falls back to onnxruntime fp32
    monkeypatch.setattr(runtimes, "openvino_has_bf16", lambda: False)
    assert resolve_compute("auto", "auto") == ("onnxruntime", "fp32")
    with pytest.raises(ConfigError, match="no native bf16"):
        resolve_compute("auto", "bf16")
    if openvino_available():
        assert resolve_compute("openvino", "auto") == ("openvino", "fp32")
        with pytest.raises(ConfigError, match="no native bf16"):
            resolve_compute("openvino", "bf16")


def test_run_config_validates_precision():
    assert RunConfig().precision == "auto"
    assert PipelineConfig.from_options(precision="fp32").run.precision == "fp32"
    with pytest.raises(ConfigError, match="precision must be"):
        RunConfig(precision="int4")
    with pytest.raises(ConfigError, match="bf16 runs on OpenVINO"):
        RunConfig(runtime="onnxruntime", precision="bf16")
    resolved = RunConfig(runtime="onnxruntime").resolved_compute()
    assert (resolved.runtime, resolved.precision) == ("onnxruntime", "fp32") and resolved.compute_resolved


def test_manifest_records_concrete_precision_and_resume_keeps_it(tmp_path, blob_folder):
    out = tmp_path / "out"
    imgfeat.extract(blob_folder, out, runtime="onnxruntime", limit=2, **FAST_MODELS)
    run = _manifest(out)["config"]["run"]
    assert (run["runtime"], run["precision"]) == ("onnxruntime", "fp32")
    # a rerun with "auto" keeps what the output recorded, whatever this CPU would pick
    # (here, with native bf16, auto alone would be openvino bf16)
    imgfeat.extract(blob_folder, out, limit=2, **FAST_MODELS)
    run = _manifest(out)["config"]["run"]
    assert (run["runtime"], run["precision"]) == ("onnxruntime", "fp32")


def test_resume_with_another_precision_is_refused(tmp_path, blob_folder):
    out = tmp_path / "out"
    imgfeat.extract(blob_folder, out, runtime="onnxruntime", limit=2, **FAST_MODELS)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OutputError, match="computed with onnxruntime fp32.*precision bf16"):
        imgfeat.extract(blob_folder, out, precision="bf16", **FAST_MODELS)
    with pytest.raises(OutputError, match="runtime openvino"):
        imgfeat.extract(blob_folder, out, runtime="openvino", **FAST_MODELS)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing written, nothing lost
    # --overwrite starts over with the new choice
    config = PipelineConfig.from_options(runtime="onnxruntime", precision="fp32", overwrite=True, **FAST_MODELS)
    assert compute_for_output(config, str(out)).run.precision == "fp32"


def test_resume_of_a_bf16_output_on_a_cpu_without_bf16_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    manifest = {"config": {"run": {"runtime": "openvino", "precision": "bf16"}}}
    (out / "_manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setattr(runtimes, "openvino_has_bf16", lambda: False)
    with pytest.raises(OutputError, match="computed with openvino bf16, which this machine cannot compute"):
        compute_for_output(PipelineConfig.from_options(**FAST_MODELS), str(out))


def test_recorded_compute_reads_old_manifests():
    assert recorded_compute(None) is None
    assert recorded_compute({"config": {"run": {"runtime": "auto"}}}) is None
    assert recorded_compute({"config": {"run": {"runtime": "openvino", "precision": "fp32"}}}) == ("openvino", "fp32")
    # manifests from before `precision` only name what ran the embedder
    old = {"config": {"run": {"runtime": "auto"}}, "model_digests": {"runtime": "openvino 2025.1.0 CPU bf16"}}
    assert recorded_compute(old) == ("openvino", "bf16")
    old["model_digests"]["runtime"] = "onnxruntime 1.22.0 CPUExecutionProvider"
    assert recorded_compute(old) == ("onnxruntime", "fp32")


def test_query_config_keeps_the_recorded_precision(monkeypatch):
    # on a machine that can run what the index recorded (made so here, whatever this CPU is)
    monkeypatch.setattr(runtimes, "openvino_has_bf16", lambda: True)
    monkeypatch.setattr(runtimes, "openvino_available", lambda: True)
    index_config = PipelineConfig.from_options(runtime="openvino", precision="bf16").to_dict()
    run = query_config(index_config).run
    assert (run.runtime, run.precision) == ("openvino", "bf16")  # never "auto" re-resolved here
    served = pipeline_config_for(index_config, ServeConfig()).run
    assert (served.runtime, served.precision) == ("openvino", "bf16")
    assert query_config(index_config, precision="fp32").run.precision == "fp32"
    moved = query_config(index_config, device="cuda").run
    assert (moved.device, moved.runtime, moved.precision) == ("cuda", "auto", "auto")
    assert query_config(index_config, runtime="onnxruntime").run.precision == "auto"


def test_cli_has_precision_flag(capsys):
    from imgfeat.cli import main

    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    assert "--precision" in capsys.readouterr().out


def test_an_engine_task_on_a_cpu_without_bf16_refuses_a_bf16_run(monkeypatch):
    # the driver resolved openvino bf16 and handed that to the tasks; an executor whose CPU
    # lacks bf16 must fail loudly, not compute fp32 rows into a bf16 output
    from imgfeat.stages import Features

    monkeypatch.setattr(runtimes, "openvino_has_bf16", lambda: False)
    config = PipelineConfig.from_options(detector="none", runtime="openvino", precision="bf16", workers=0)
    with pytest.raises(ConfigError, match="no native bf16"):
        Features(config)


def test_query_config_falls_back_to_fp32_where_bf16_cannot_run(monkeypatch):
    # a bf16 index searched from a CPU without bf16: fp32 queries, said out loud
    monkeypatch.setattr(runtimes, "openvino_has_bf16", lambda: False)
    index_config = PipelineConfig.from_options(runtime="openvino", precision="bf16").to_dict()
    with pytest.warns(RuntimeWarning, match="computed in bf16"):
        run = query_config(index_config).run
    assert (run.runtime, run.precision) == ("auto", "fp32")
    fp32 = PipelineConfig.from_options(runtime="onnxruntime", precision="fp32").to_dict()
    assert query_config(fp32).run.precision == "fp32"  # nothing to fall back from, no warning


def test_query_config_keeps_int8_where_openvino_is_missing(monkeypatch):
    # an OpenVINO index searched where OpenVINO is not installed: onnxruntime, same precision
    monkeypatch.setattr(runtimes, "openvino_available", lambda: False)
    for precision, expected in (("int8", "int8"), ("fp32", "fp32")):
        index_config = PipelineConfig.from_options(runtime="openvino", precision=precision).to_dict()
        run = query_config(index_config).run
        assert (run.runtime, run.precision) == ("onnxruntime", expected)


# --- accuracy gates ---------------------------------------------------------------------------


class Gate(NamedTuple):
    """How far a (runtime, precision) may move the onnxruntime fp32 results on the samples."""

    min_cosine: float  # every photo's embedding against the reference's
    max_bits: int  # code bits (of 256) that differ, per photo
    near_tie: float  # reference detections this close to its top score may come first instead
    min_iou: float  # the main box against the matching reference box
    max_score_shift: float  # the main detection's score against the matching reference one


# fp32 is the same arithmetic reordered. bf16 measured cosine 0.991-0.9996, 5-15 bits, scores
# moved by up to 0.066. int8 (onnxruntime / OpenVINO) measured cosine >= 0.962 / 0.965, at
# most 21 / 20 bits, and scores moved by up to 0.15 where the label held; but its main object
# fails the gate on 4 / 2 photos (docs/benchmarks.md "INT8").
GATES = {
    ("openvino", "fp32"): Gate(0.9999, 2, 0.0, 0.9, 0.01),
    ("openvino", "bf16"): Gate(0.99, 32, 0.1, 0.9, 0.1),
    ("onnxruntime", "int8"): Gate(0.95, 32, 0.1, 0.5, 0.2),
    ("openvino", "int8"): Gate(0.95, 32, 0.1, 0.5, 0.2),
}
# where the main-object gate does not hold: such a precision is offered, never the default
INT8_MAIN_OBJECT = (
    "int8 changes the main object beyond a near-tie: chelsea_cat (cat 0.47 -> person, which the "
    "reference scored 0.14) and dog (bicycle 0.54 -> dog, reference 0.41) on both runtimes; on "
    "onnxruntime also colorful_cups (clock 0.34 -> dining table 0.52, reference 0.24) and "
    "kites_beach (another kite). So `auto` never picks int8")


def _run_models(images: list[np.ndarray], runtime: str, precision: str):
    detector = create_detector("centernet-mbv3", runtime=runtime, precision=precision)
    embedder = create_embedder("mobilenet-v2", runtime=runtime, precision=precision)
    detections = [d for i in range(0, len(images), 8) for d in detector(images[i:i + 8])]
    embeddings = embedder(images)
    codes = create_hasher("rproj", embedder.dim, 256)(embeddings)
    return detections, embeddings, codes


@pytest.fixture(scope="module")
def reference():
    """The onnxruntime fp32 results on the sample photos: what every precision is gated against."""
    images = _photos()
    assert len(images) >= 10
    return images, _run_models(images, "onnxruntime", "fp32")


_RESULTS: dict = {}


def _results(reference, runtime: str, precision: str):
    """The case's results on the sample photos (computed once per module), or a skip with the
    reason this machine cannot run the case natively."""
    if runtime == "openvino" and not openvino_available():
        pytest.skip("openvino not installed (pip install 'imgfeat[openvino]')")
    if precision == "bf16" and not openvino_has_bf16():
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16 or AMX): OpenVINO cannot run bf16 here")
    if precision == "int8":
        pytest.importorskip("onnx", reason="int8 quantisation needs onnx (pip install 'imgfeat[int8]')")
    if (runtime, precision) not in _RESULTS:
        _RESULTS[runtime, precision] = _run_models(reference[0], runtime, precision)
    return _RESULTS[runtime, precision]


CASES = [pytest.param(r, p, id=f"{r}-{p}") for r, p in GATES]


@pytest.mark.slow
@pytest.mark.parametrize("runtime,precision", CASES)
def test_embedding_gate_on_real_photos(reference, runtime, precision):
    """Each (runtime, precision) keeps the onnxruntime fp32 reference's embeddings (cosine) and
    codes (bits that differ of 256) on every sample photo. int8 is calibrated on these same
    photos, so its figures are in-sample ones."""
    gate = GATES[runtime, precision]
    _, (_, ref_emb, ref_codes) = reference
    _, emb, codes = _results(reference, runtime, precision)
    cosines = np.sum(ref_emb * emb, axis=1)
    assert cosines.min() >= gate.min_cosine, cosines
    bits = np.unpackbits(ref_codes ^ codes, axis=1).sum(axis=1)
    assert bits.max() <= gate.max_bits, bits


@pytest.mark.slow
@pytest.mark.parametrize("runtime,precision", [
    pytest.param(r, p, id=f"{r}-{p}", marks=[pytest.mark.xfail(strict=True, raises=AssertionError, reason=INT8_MAIN_OBJECT)]
                 if p == "int8" else []) for r, p in GATES])
def test_main_object_gate_on_real_photos(reference, runtime, precision):
    """Each (runtime, precision) keeps the reference's main detection on every sample photo:
    its label, box (IoU) and score, unless the reference's top detections are within the
    gate's `near_tie` of each other (kites_beach: a kite 0.580, a person 0.577): then it must
    be one of those near-tied reference detections, never anything else.

    int8 is expected to fail it (strict: should it start to hold, decide again whether
    `auto` may pick int8)."""
    gate = GATES[runtime, precision]
    _, (ref_dets, _, _) = reference
    dets, _, _ = _results(reference, runtime, precision)
    compared = clear = 0
    for ref, got in zip(ref_dets, dets):
        if not len(ref) or ref[0, 4] < 0.3:
            continue
        compared += 1
        assert len(got), ref[0]
        tied = ref[ref[:, 4] >= ref[0, 4] - gate.near_tie] if gate.near_tie else ref[:1]
        matches = [c for c in tied if c[5] == got[0, 5] and _iou(c[:4], got[0, :4]) >= gate.min_iou]
        assert matches, (tied, got[0])
        assert abs(float(matches[0][4]) - float(got[0, 4])) <= gate.max_score_shift, (matches[0], got[0])
        clear += len(tied) == 1
    assert compared >= 8 and clear >= 5, (compared, clear)  # 14 and 7 on the samples here
