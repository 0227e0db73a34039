"""End-to-end runs with the tiny test models: one row per input, resume, schema, readers, CLI."""

import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import imgfeat
from imgfeat.cli import main as cli
from imgfeat.errors import OutputError, TooManyErrors
from imgfeat.stages import Pipeline

from conftest import FAST_MODELS, blob_image

EXPECTED_ERRORS = {
    "empty.jpg": "empty", "truncated.jpg": "corrupt", "random_bytes.jpg": "not-an-image",
    "text_named.jpg": "not-an-image", "notes.txt": "not-an-image", "bomb.png": "too-large",
    "bomb_header.jpg": "too-large", "dangling.jpg": "not-found",
}


def files_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.is_file() or p.is_symlink())


def test_mixed_folder_one_row_per_input(mixed_folder, tmp_path):
    out = tmp_path / "out"
    report = imgfeat.extract(mixed_folder, out, shard_size=5, **FAST_MODELS)
    df = pd.read_parquet(out)
    assert sorted(df.path) == files_in(mixed_folder)
    assert df.id.is_unique and len(df) == report.processed == report.inputs
    by_name = {Path(p).name: row for p, row in zip(df.path, df.itertuples())}
    for name, kind in EXPECTED_ERRORS.items():
        row = by_name[name]
        assert row.status == "error" and row.error.startswith(kind + ":"), (name, row.error)
        assert row.embedding is None and row.code is None
    ok = df[df.status == "ok"]
    assert len(ok) == len(df) - len(EXPECTED_ERRORS) == report.ok
    assert report.errors == {k: list(EXPECTED_ERRORS.values()).count(k) for k in set(EXPECTED_ERRORS.values())}
    assert ok.error.isna().all()
    for row in ok.itertuples():
        assert abs(np.linalg.norm(np.asarray(row.embedding, dtype=np.float64)) - 1) < 1e-4
        assert len(row.code) == 32
    exif = by_name["exif_rotated.jpg"]
    assert (exif.width, exif.height) == (80, 120)
    good = by_name["good1.jpg"]
    assert good.crop == "object" and good.label == "blob"
    assert np.allclose(good.box, [40, 50, 160, 120])


def test_schema_and_manifest(blob_folder, tmp_path):
    out = tmp_path / "out"
    imgfeat.extract(blob_folder, out, dtype="float16", code_bits=64, **FAST_MODELS)
    schema = pq.read_schema(next(out.glob("part-*.parquet")))
    assert schema.names == ["id", "path", "status", "error", "width", "height", "box", "label", "score",
                            "crop", "embedding", "code", "image_embedding", "image_code", "detector", "embedder",
                            "hasher"]
    assert str(schema.field("embedding").type) == "fixed_size_list<element: halffloat>[64]"
    assert str(schema.field("box").type) == "fixed_size_list<element: float>[4]"
    assert str(schema.field("code").type) == "fixed_size_binary[8]"
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["complete"] and manifest["inputs"] == 7
    assert manifest["models"] == {"detector": "test-blob", "embedder": "test-tiny", "hasher": "rproj-64-s0"}
    assert manifest["config"]["embed"]["dtype"] == "float16"
    info = imgfeat.info(out)
    assert info["rows"] == 7 and info["status"] == {"ok": 7} and info["complete"]


def test_readable_by_duckdb_and_pyarrow_dataset(blob_folder, tmp_path):
    out = tmp_path / "out"
    imgfeat.extract(blob_folder, out, shard_size=3, **FAST_MODELS)
    count, dim = duckdb.sql(
        f"select count(*), max(len(embedding)) from read_parquet('{out}/*.parquet')").fetchall()[0]
    assert (count, dim) == (7, 64)
    assert len(list(out.glob("part-*.parquet"))) == 3


def test_no_detection_embeds_whole_image_and_says_so(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    from PIL import Image
    Image.new("RGB", (40, 30), "white").save(folder / "plain.png")
    blob_image(folder / "blob.png")
    out = tmp_path / "out"
    imgfeat.extract(folder, out, **FAST_MODELS)
    df = pd.read_parquet(out).set_index(pd.read_parquet(out).path.map(lambda p: Path(p).name))
    assert df.loc["plain.png", "crop"] == "full:no-detection"
    assert np.allclose(df.loc["plain.png", "box"], [0, 0, 40, 30]) and pd.isna(df.loc["plain.png", "label"])
    off = tmp_path / "off"
    imgfeat.extract(folder, off, **{**FAST_MODELS, "detector": "none"})
    assert set(pd.read_parquet(off).crop) == {"full:detect-off"}


def test_resume_writes_only_missing_shards(blob_folder, tmp_path):
    out = tmp_path / "out"
    first = imgfeat.extract(blob_folder, out, shard_size=2, **FAST_MODELS)
    assert first.processed == 7
    before = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    (out / "part-00001.parquet").unlink()
    (out / ".part-00002.parquet.tmp-dead").write_bytes(b"half a shard")  # left by a kill
    second = imgfeat.extract(blob_folder, out, shard_size=2, **FAST_MODELS)
    assert (second.processed, second.skipped) == (2, 5)
    assert not list(out.glob(".*tmp*"))
    after = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(before.drop(columns=["embedding"]), after.drop(columns=["embedding"]))
    third = imgfeat.extract(blob_folder, out, shard_size=2, **FAST_MODELS)
    assert (third.processed, third.skipped) == (0, 7)


def test_resume_refuses_a_different_run(blob_folder, tmp_path):
    out = tmp_path / "out"
    imgfeat.extract(blob_folder, out, shard_size=2, **FAST_MODELS)
    blob_image(blob_folder / "new.jpg")
    with pytest.raises(OutputError, match="overwrite"):
        imgfeat.extract(blob_folder, out, shard_size=3, **FAST_MODELS)
    with pytest.raises(OutputError, match="overwrite"):
        imgfeat.extract(blob_folder, out, shard_size=2, **dict(FAST_MODELS, embedder="test-tiny", dtype="float16"))
    added = imgfeat.extract(blob_folder, out, shard_size=2, **FAST_MODELS)  # a new input: just that one
    assert (added.processed, added.skipped) == (1, 7)
    report = imgfeat.extract(blob_folder, out, shard_size=2, overwrite=True, **FAST_MODELS)
    assert report.processed == 8 and len(pd.read_parquet(out)) == 8


def test_refuses_a_foreign_non_empty_folder(blob_folder, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "important.txt").write_text("keep me")
    with pytest.raises(OutputError, match="did not write"):
        imgfeat.extract(blob_folder, out, **FAST_MODELS)
    assert (out / "important.txt").exists()


def test_decode_threads_give_the_same_rows(mixed_folder, tmp_path):
    inline = imgfeat.extract(mixed_folder, tmp_path / "a", shard_size=4, **FAST_MODELS)
    pooled = imgfeat.extract(mixed_folder, tmp_path / "b", shard_size=4, **{**FAST_MODELS, "workers": 2})
    assert inline.processed == pooled.processed
    a = pd.read_parquet(tmp_path / "a").sort_values("id").reset_index(drop=True)
    b = pd.read_parquet(tmp_path / "b").sort_values("id").reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    assert {"read", "decode", "detect", "embed", "write"} <= set(pooled.stage_seconds)


def test_inference_streams_keep_rows_in_order(mixed_folder, tmp_path):
    # several batches in inference at once must still write each shard in input order
    options = {**FAST_MODELS, "shard_size": 5, "batch_size": 2}
    imgfeat.extract(mixed_folder, tmp_path / "one", streams=1, **options)
    report = imgfeat.extract(mixed_folder, tmp_path / "three", streams=3, **{**options, "workers": 1})
    one = sorted((tmp_path / "one").glob("part-*.parquet"))
    three = sorted((tmp_path / "three").glob("part-*.parquet"))
    assert [p.name for p in one] == [p.name for p in three] and len(one) >= 3
    for a, b in zip(one, three):
        pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
    assert report.processed == len(files_in(mixed_folder))
    with open(tmp_path / "three" / "_manifest.json") as fh:
        assert json.load(fh)["config"]["run"]["streams"] == 3


def test_limit_and_error_ratio(mixed_folder, tmp_path):
    report = imgfeat.extract(mixed_folder, tmp_path / "lim", limit=4, **FAST_MODELS)
    assert report.inputs == 4 and len(pd.read_parquet(tmp_path / "lim")) == 4
    with pytest.raises(TooManyErrors):
        imgfeat.extract(mixed_folder, tmp_path / "ratio", max_error_ratio=0.1, **FAST_MODELS)
    assert len(pd.read_parquet(tmp_path / "ratio")) == len(files_in(mixed_folder))  # still written


def test_pipeline_on_an_arrow_table_matches_the_runner(blob_folder, tmp_path):
    out = tmp_path / "out"
    imgfeat.extract(blob_folder, out, **FAST_MODELS)
    expected = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    import pyarrow as pa
    table = pa.table({"id": list(expected.id), "path": list(expected.path),
                      "content": [Path(p).read_bytes() for p in expected.path]})
    config = imgfeat.PipelineConfig.from_options(**FAST_MODELS)
    got = Pipeline(config)(table).to_pandas().sort_values("id").reset_index(drop=True)
    vectors = ["embedding", "image_embedding"]
    pd.testing.assert_frame_equal(expected.drop(columns=vectors), got.drop(columns=vectors))
    # batch composition changes float summation order, nothing more
    for column in vectors:
        assert np.allclose(np.stack(expected[column]), np.stack(got[column]), atol=1e-5)


def test_cli_extract_and_info(mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli(["extract", str(mixed_folder), "-o", str(out), "--detector", "test-blob",
                "--embedder", "test-tiny", "--workers", "0", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0
    assert f"{len(files_in(mixed_folder)) - 8} ok, 8 failed" in printed and str(out) in printed
    assert cli(["info", str(out)]) == 0
    info_text = capsys.readouterr().out
    assert "error 8" in info_text and "too-large: 2" in info_text and "embedding" in info_text
    assert cli(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"]["error"] == 8


def test_cli_exit_codes(tmp_path, blob_folder, capsys):
    assert cli(["extract", str(tmp_path / "missing"), "-o", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "input not found" in capsys.readouterr().err
    assert cli(["extract", str(blob_folder), "-o", str(tmp_path / "o"), "--detector", "nope",
                "--embedder", "test-tiny", "--no-progress"]) == 1
    assert "unknown detector 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli(["extract", str(blob_folder)])  # no -o
    assert exit_info.value.code == 2
    assert cli(["info", str(tmp_path)]) == 1


def test_cli_help_reads_well(capsys):
    with pytest.raises(SystemExit):
        cli(["extract", "--help"])
    text = capsys.readouterr().out
    for flag in ("--batch-size", "--workers", "--limit", "--device", "--detector", "--embedder",
                 "--no-detect", "--overwrite", "examples:"):
        assert flag in text


def test_cli_output_into_a_closed_pipe_is_quiet(blob_folder, tmp_path):
    # `imgfeat info out/ | head -1`: the reader leaves early; no traceback, exit 141 like a shell tool
    import subprocess
    import sys

    imgfeat.extract(blob_folder, tmp_path / "out", **FAST_MODELS)
    with subprocess.Popen([sys.executable, "-m", "imgfeat.cli", "info", str(tmp_path / "out")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        proc.stdout.close()  # the reader is gone before the first line is written
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_whole_image_vector_beside_the_object_vector(blob_folder, tmp_path):
    """image_embedding is the whole image's vector (what --no-detect stores as embedding); the
    object's is the crop's; codes are the hasher's codes of each."""
    imgfeat.extract(blob_folder, tmp_path / "both", **FAST_MODELS)
    imgfeat.extract(blob_folder, tmp_path / "whole", **{**FAST_MODELS, "detector": "none"})
    both = imgfeat.read_features(tmp_path / "both").to_pandas().sort_values("id")
    whole = imgfeat.read_features(tmp_path / "whole").to_pandas().sort_values("id")
    assert (both["crop"] == "object").all()
    image = np.stack(both["image_embedding"]).astype(np.float32)
    obj = np.stack(both["embedding"]).astype(np.float32)
    assert np.allclose(image, np.stack(whole["embedding"]), atol=1e-6)
    assert np.allclose(image, np.stack(whole["image_embedding"]), atol=1e-6)  # no crop: the same vector
    assert list(both["image_code"]) == list(whole["code"])
    assert not np.allclose(image, obj)  # the crop of the blob is not the white page around it
    none = imgfeat.extract(blob_folder, tmp_path / "none", whole_image=False, **FAST_MODELS)
    assert none.ok == 7
    assert "image_embedding" not in pq.read_schema(next((tmp_path / "none").glob("part-*.parquet"))).names


def test_cli_extract_shows_a_progress_bar_by_default(blob_folder, tmp_path, capsys):
    from imgfeat.cli import main

    assert main(["extract", str(blob_folder), "-o", str(tmp_path / "out"), "--detector", "test-blob",
                 "--embedder", "test-tiny", "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "extract" in err and "7/7" in err  # tqdm's bar on stderr, done
