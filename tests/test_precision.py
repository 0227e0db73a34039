"""Precision: resolved once, recorded in the manifest, kept by resumes and by queries."""

from __future__ import annotations

import json

import pytest

import imgfeat
from imgfeat.config import PipelineConfig, RunConfig
from imgfeat.errors import ConfigError, OutputError
from imgfeat.models import runtimes
from imgfeat.models.runtimes import openvino_available, openvino_has_bf16, resolve_compute
from imgfeat.retrieval.search import query_config
from imgfeat.runners.base import compute_for_output, recorded_compute
from imgfeat.serve.service import ServeConfig, pipeline_config_for

from conftest import FAST_MODELS


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
