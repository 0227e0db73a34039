"""Sources beyond files and Parquet: tar/zip members (fsspec chains), WebDataset shards, SQL
tables (SQLite here; PostgreSQL on a throwaway server started on loopback).

Each kind: one row per input, bad members as error rows, and a rerun after a partial output
(a shard deleted, a kill's temporary file left) computes only the missing shard."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import fsspec
import pandas as pd
import pytest

import imgfeat
from imgfeat.cli import main as cli
from imgfeat.errors import ConfigError, SourceError
from imgfeat.sources import open_source, stable_id
from imgfeat.sources.archives import expand_braces
from imgfeat.sources.sql import dispose_engines

from conftest import FAST_MODELS, blob_image


def _jpeg(tmp_path: Path, offset: int) -> bytes:
    return blob_image(tmp_path / f"_tmp{offset}.jpg", offset=offset).read_bytes()


def _tar(path: Path, members: list[tuple[str, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def members(tmp_path: Path) -> list[tuple[str, bytes]]:
    """Five good JPEGs (one in a sub-folder), one corrupt JPEG, one text file."""
    good = [(f"img{i}.jpg", _jpeg(tmp_path, i * 10)) for i in range(4)] + [("sub/deep.jpg", _jpeg(tmp_path, 5))]
    return good + [("broken.jpg", b"\xff\xd8 not really a jpeg"), ("notes.txt", b"hello")]


def _rows(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).set_index("id")


def _resumes_once(source: str, out: Path, total: int, **options) -> None:
    """Delete one shard of a complete output, leave a kill's temporary file: the rerun writes
    just that shard and the output holds each input once, unchanged."""
    options = {"shard_size": 2, **FAST_MODELS, **options}
    before = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    (out / "part-00001.parquet").unlink()
    (out / ".part-00002.parquet.tmp-dead").write_bytes(b"half a shard")
    again = imgfeat.extract(source, out, **options)
    assert (again.processed, again.skipped) == (2, total - 2)
    after = pd.read_parquet(out).sort_values("id").reset_index(drop=True)
    assert after.id.is_unique and len(after) == total
    pd.testing.assert_frame_equal(before.drop(columns=["embedding"]), after.drop(columns=["embedding"]))
    assert not list(out.glob(".*tmp*"))


# --- tar / zip members --------------------------------------------------------------------

def test_tar_members_through_a_chain_are_rows_and_resume(members, tmp_path):
    archive = _tar(tmp_path / "photos.tar", members)
    out = tmp_path / "out"
    spec = f"tar://**::{archive}"
    report = imgfeat.extract(spec, out, shard_size=2, **FAST_MODELS)
    assert report.processed == 7
    rows = _rows(out)
    by_name = {uri.split("://", 1)[1].split("::")[0]: row for uri, row in zip(rows.path, rows.itertuples())}
    assert {n for n, r in by_name.items() if r.status == "ok"} == {"img0.jpg", "img1.jpg", "img2.jpg", "img3.jpg",
                                                                  "sub/deep.jpg"}
    assert by_name["broken.jpg"].status == "error" and by_name["notes.txt"].status == "error"
    assert all(i == stable_id(p) for i, p in zip(rows.index, rows.path))  # ids: SHA-1 of the member URI
    assert all(p.endswith(f"::{archive}") for p in rows.path)
    _resumes_once(spec, out, 7)


def test_plain_archive_paths_zip_chains_and_compressed_tars_agree(members, tmp_path, monkeypatch):
    tar = _tar(tmp_path / "photos.tar", members)
    gz = _tar(tmp_path / "photos.tar.gz", members, "w:gz")
    zpath = tmp_path / "photos.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    monkeypatch.chdir(tmp_path)
    expected = {name: data for name, data in members}
    for spec in ("photos.tar", str(gz), "photos.zip", "zip://**::photos.zip", f"zip://**::file://{zpath}"):
        source = open_source(spec)
        results = source.reader().read(source.list(), max_bytes=1 << 20)
        got = {r.item.uri.split("://", 1)[1].split("::")[0]: r.content for r in results}
        assert got == expected, spec
    # a pattern selects members; --include filters names
    assert [i.uri.split("::")[0] for i in open_source("tar://sub/*.jpg::photos.tar").list()] == ["tar://sub/deep.jpg"]
    assert len(open_source("photos.zip", include="*.txt").list()) == 1
    # bounded: a member over the byte limit is an error row, the others are read
    results = open_source(str(tar)).read(open_source(str(tar)).list(), max_bytes=100)
    assert {r.error.split(":")[0] for r in results if r.item.uri.startswith("tar://img")} == {"too-large"}
    assert next(r for r in results if "notes.txt" in r.item.uri).content == b"hello"


def test_archive_on_an_fsspec_store_and_bad_archives(members, tmp_path):
    fs = fsspec.filesystem("memory")
    data = _tar(tmp_path / "photos.tar", members).read_bytes()
    fs.pipe("/s14/photos.tar", data)
    try:
        source = open_source("tar://*.jpg::memory://s14/photos.tar")
        results = source.reader().read(source.list(), max_bytes=1 << 20)
        assert sorted(r.item.uri.split("::")[0] for r in results) == [
            "tar://broken.jpg", "tar://img0.jpg", "tar://img1.jpg", "tar://img2.jpg", "tar://img3.jpg"]
        assert all(r.content == dict(members)[r.item.uri.split("://")[1].split("::")[0]] for r in results)
        # the archive vanished between listing and reading: every row says so, nothing raises
        fs.rm("/s14/photos.tar")
        gone = source.reader().read(source.list(), max_bytes=1 << 20)
        assert all(r.content is None and r.error.startswith("not-found") for r in gone)
    finally:
        if fs.exists("/s14"):
            fs.rm("/s14", recursive=True)
    (tmp_path / "fake.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(SourceError, match="not a readable tar"):
        open_source(str(tmp_path / "fake.tar"))
    with pytest.raises(SourceError, match="not found"):
        open_source(f"tar://**::{tmp_path / 'missing.tar'}")
    for spec in ("tar://**::nope://b/x.tar", "zip://*.jpg::nope://b/x.zip", "webdataset:nope://b/{0..1}.tar"):
        with pytest.raises(SourceError, match="Protocol not known: nope"):
            open_source(spec)


def test_truncated_tar_member_is_an_error_row(members, tmp_path):
    archive = _tar(tmp_path / "photos.tar", members)
    source = open_source(str(archive))
    data = archive.read_bytes()
    last_good = max((i for i in source.list() if i.uri.startswith("tar://sub")), key=lambda i: i.ref[2])
    archive.write_bytes(data[:last_good.ref[2] + 10])  # cut inside sub/deep.jpg
    results = source.reader().read(source.list(), max_bytes=1 << 20)
    cut = next(r for r in results if r.item == last_good)
    assert cut.error.startswith("read-error: archive truncated")
    assert next(r for r in results if "img0" in r.item.uri).content == dict(members)["img0.jpg"]


# --- WebDataset ---------------------------------------------------------------------------

@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """3 shards x 3 samples: each a .jpg (or .png) plus .json; one corrupt image, one sample
    with no image at all."""
    folder = tmp_path / "shards"
    folder.mkdir()
    n = 0
    for s in range(3):
        samples = []
        for k in range(3):
            key = f"s{s}k{k}"
            if (s, k) == (1, 1):
                samples.append((f"{key}.json", b'{"label": "no image"}'))
            elif (s, k) == (2, 0):
                samples += [(f"{key}.jpg", b"\xff\xd8 junk"), (f"{key}.json", b"{}")]
            else:
                ext = "png" if k == 2 else "jpg"
                blob_image(tmp_path / f"_w.{ext}", offset=n * 7)
                samples += [(f"{key}.json", b"{}"), (f"{key}.{ext}", (tmp_path / f"_w.{ext}").read_bytes()),
                            (f"{key}.cls", b"3")]
            n += 1
        _tar(folder / f"shard-{s:03d}.tar", samples)
    return folder


def test_webdataset_samples_are_rows_keyed_by_key_and_resume(shards, tmp_path):
    out = tmp_path / "out"
    spec = str(shards / "shard-{000..002}.tar")
    report = imgfeat.extract(spec, out, shard_size=2, **FAST_MODELS)
    assert report.processed == 9
    rows = _rows(out)
    assert sorted(rows.index) == sorted(f"s{s}k{k}" for s in range(3) for k in range(3))
    assert set(rows.index[rows.status == "error"]) == {"s1k1", "s2k0"}
    assert "no image member (has json)" in rows.loc["s1k1", "error"]
    assert rows.loc["s0k2", "path"].startswith("tar://s0k2.png::")
    _resumes_once(spec, out, 9)


def test_webdataset_is_asked_for_by_prefix_folder_or_braces(shards, tmp_path):
    keys = [i.id for i in open_source(str(shards / "shard-{000..002}.tar")).list()]
    assert [i.id for i in open_source(str(shards)).list()] == keys  # a folder of only .tar files
    assert [i.id for i in open_source(f"webdataset:{shards}/*.tar").list()] == keys
    assert [i.id for i in open_source(f"webdataset:{shards / 'shard-001.tar'}").list()] == ["s1k0", "s1k1", "s1k2"]
    assert open_source(str(shards)).describe()["kind"] == "webdataset"
    with pytest.raises(ConfigError, match="overlaps"):  # features beside the shards would end the detection
        imgfeat.extract(str(shards), shards / "features", **FAST_MODELS)
    assert expand_braces("a-{08..10}-{x,y}.tar") == ["a-08-x.tar", "a-08-y.tar", "a-09-x.tar", "a-09-y.tar",
                                                     "a-10-x.tar", "a-10-y.tar"]
    with pytest.raises(SourceError, match="shard not found"):
        open_source(str(shards / "shard-{000..003}.tar"))


def test_webdataset_repeated_keys_need_shard_ids_and_streams_from_memory(shards, tmp_path):
    shutil.copy(shards / "shard-000.tar", shards / "shard-003.tar")
    with pytest.raises(SourceError, match="__shard__/__key__"):
        open_source(str(shards))
    source = open_source(str(shards), id_column="__shard__/__key__")
    assert len(source.list()) == 12 and "shard-003/s0k0" in {i.id for i in source.list()}
    fs = fsspec.filesystem("memory")
    try:
        for s in range(3):
            fs.pipe(f"/wds14/shard-{s:03d}.tar", (shards / f"shard-{s:03d}.tar").read_bytes())
        remote = open_source("memory://wds14/shard-{000..002}.tar")
        results = remote.reader().read(remote.list(), max_bytes=1 << 20)
        assert [i.id for i in open_source("webdataset:memory://wds14/").list()] == [i.id for i in remote.list()]
        assert open_source("memory://wds14/").describe()["kind"] == "folder"  # remote: only when asked
        local = open_source(str(shards / "shard-{000..002}.tar"))
        assert [(r.item.id, r.content, r.error) for r in results] == [
            (r.item.id, r.content, r.error) for r in local.reader().read(local.list(), max_bytes=1 << 20)]
    finally:
        fs.rm("/wds14", recursive=True)


# --- SQL ----------------------------------------------------------------------------------

try:
    import sqlalchemy
except ImportError:  # the sql extra is optional; the tests above still run
    sqlalchemy = None
needs_sql = pytest.mark.skipif(sqlalchemy is None, reason="SQL sources need imgfeat[sql] (SQLAlchemy)")


def _fill(url: str, images: list[bytes], tmp_path: Path) -> None:
    """products(sku text primary key, image blob, url text, kind text): the images, a corrupt
    blob, a NULL blob, and url pointing to files written beside."""
    engine = sqlalchemy.create_engine(url)
    meta = sqlalchemy.MetaData()
    table = sqlalchemy.Table("products", meta, sqlalchemy.Column("sku", sqlalchemy.String, primary_key=True),
                             sqlalchemy.Column("image", sqlalchemy.LargeBinary),
                             sqlalchemy.Column("url", sqlalchemy.String), sqlalchemy.Column("kind", sqlalchemy.String))
    meta.drop_all(engine)
    meta.create_all(engine)
    rows = []
    for i, data in enumerate(images + [b"junk", None]):
        path = tmp_path / f"sql-{i}.jpg"
        path.write_bytes(data or b"")
        rows.append({"sku": f"sku-{i:02d}", "image": data, "url": str(path), "kind": "shoe" if i % 2 else "bag"})
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    engine.dispose()


def _check_sql(url: str, tmp_path: Path) -> None:
    images = [_jpeg(tmp_path, i * 9) for i in range(4)]
    _fill(url, images, tmp_path)
    out = tmp_path / "out"
    report = imgfeat.extract(url, out, table="products", content_column="image", id_column="sku",
                             shard_size=2, **FAST_MODELS)
    assert report.processed == 6
    rows = _rows(out)
    assert list(rows.sort_index().status) == ["ok"] * 4 + ["error", "error"]
    assert rows.loc["sku-05", "error"] == "read-error: null content"
    _resumes_once(url, out, 6, table="products", content_column="image", id_column="sku")
    # found by itself: the primary key is the id, the one BLOB column the content
    auto = open_source(url, table="products")
    assert [i.id for i in auto.list()] == [f"sku-{i:02d}" for i in range(6)]
    big = auto.reader().read(auto.list()[:2], max_bytes=100)
    assert all(r.error.startswith("too-large") and r.content is None for r in big)
    # a query, and a path column
    shoes = open_source(url, query="SELECT sku, image FROM products WHERE kind = 'shoe'", id_column="sku",
                        content_column="image")
    results = shoes.reader().read(shoes.list(), max_bytes=1 << 20)
    assert [(r.item.id, r.content) for r in results[:2]] == [("sku-01", images[1]), ("sku-03", images[3])]
    paths = open_source(url, table="products", path_column="url", id_column="sku")
    assert paths.describe()["kind"] == "sql-paths"
    assert {i.id for i in paths.list()} == {f"sku-{i:02d}" for i in range(6)}
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE products SET url = NULL WHERE sku = 'sku-01'"))
    engine.dispose()
    paths = open_source(url, table="products", path_column="url", id_column="sku")
    by_id = {r.item.id: r for r in paths.reader().read(paths.list(), max_bytes=1 << 20)}
    assert len(by_id) == 6 and by_id["sku-01"].error == "read-error: null path"
    assert by_id["sku-00"].content == images[0]
    with pytest.raises(ConfigError, match="--id-column"):
        open_source(url, query="SELECT sku, image FROM products", content_column="image")
    with pytest.raises(ConfigError, match="no column"):
        open_source(url, table="products", content_column="photo")


@needs_sql
def test_sqlite_table_blobs_query_and_paths(tmp_path):
    _check_sql(f"sqlite:///{tmp_path / 'shop.sqlite'}", tmp_path)


@needs_sql
def test_sql_cli_and_clear_errors(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'shop.sqlite'}"
    _fill(url, [_jpeg(tmp_path, 0)], tmp_path)
    out = tmp_path / "out"
    assert cli(["extract", url, "--table", "products", "--id-column", "sku", "--content-column", "image",
                "-o", str(out), "--detector", "test-blob", "--embedder", "test-tiny", "--no-progress"]) == 0
    assert sorted(_rows(out).index) == ["sku-00", "sku-01", "sku-02"]
    with pytest.raises(SourceError, match="no table"):
        open_source(url, table="nope")
    with pytest.raises(ConfigError, match="exactly one of --table or --query"):
        open_source(url)
    from imgfeat.sources.sql import safe_url

    assert "secret" not in safe_url("postgresql+psycopg://reader:secret@db/shop")
    with pytest.raises(ConfigError, match="need a database URL"):
        open_source(str(tmp_path), table="products")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on loopback (Debian's postgresql package): initdb in a
    temporary folder, `postgres` as the postgres user when running as root (it refuses root)."""
    pytest.importorskip("psycopg", reason="the PostgreSQL driver comes with imgfeat[sql]")
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh installs Debian's postgresql as root)")
    bindir = bins[-1].parent
    prefix: list[str] = []
    folder = tempfile.mkdtemp(prefix="imgfeat-pg-")
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start postgres as another user")
        import pwd

        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to start the server as")
        os.chown(folder, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data = os.path.join(folder, "data")
    port = _free_port()
    subprocess.run(prefix + [str(bindir / "initdb"), "-D", data, "-A", "trust", "-U", "imgfeat", "--no-sync"],
                   check=True, capture_output=True)
    log = os.path.join(folder, "postgres.log")
    with open(log, "wb") as sink:  # the child keeps its own descriptor
        server = subprocess.Popen(prefix + [str(bindir / "postgres"), "-D", data, "-p", str(port), "-h", "127.0.0.1",
                                            "-k", folder, "-F"], stdout=sink, stderr=sink)
    url = f"postgresql+psycopg://imgfeat@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {Path(log).read_text()[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        dispose_engines()  # imgfeat's pooled connections, before their server goes
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


@needs_sql
def test_postgresql_table_blobs_query_and_paths(postgres_url, tmp_path):
    _check_sql(postgres_url, tmp_path)


def _read_all(reader, items):
    return [(r.item.id, r.content, r.error) for r in reader.read(items, max_bytes=1 << 20)]


@needs_sql
def test_readers_are_picklable_and_read_in_another_process(shards, tmp_path):
    """What engines ship to workers: the reader alone (no listing), opened lazily in the worker."""
    import concurrent.futures
    import multiprocessing
    import pickle

    url = f"sqlite:///{tmp_path / 'shop.sqlite'}"
    _fill(url, [_jpeg(tmp_path, 0), _jpeg(tmp_path, 9)], tmp_path)
    sources = [open_source(url, table="products"), open_source(str(shards))]
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for source in sources:
            reader = pickle.loads(pickle.dumps(source.reader()))
            assert reader.list() == []
            items = source.list()
            assert pool.submit(_read_all, source.reader(), items).result() == _read_all(source, items)


def test_a_glob_through_a_chain_keeps_the_chain(members, tmp_path):
    """The glob kind (used for chains no archive kind takes) builds URIs that still open: the
    "::ARCHIVE" tail is kept (it was lost: every row failed with read-error: is a directory)."""
    from imgfeat.sources.base import SourceRequest
    from imgfeat.sources.files import open_glob

    archive = _tar(tmp_path / "photos.tar", members)
    source = open_glob(SourceRequest(f"tar://*.jpg::{archive}"))
    results = source.read(source.list(), max_bytes=1 << 20)
    assert len(results) == 5 and all(r.item.uri.endswith(f"::{archive}") for r in results)
    assert all(r.content == dict(members)[r.item.uri.split("://")[1].split("::")[0]] for r in results)


def _kill_after_shards(args: list[str], out: Path, shards: int) -> None:
    """Run `imgfeat extract ARGS` and SIGKILL it once it has written `shards` shards."""
    import signal
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(imgfeat.__file__).parent.parent))
    process = subprocess.Popen([sys.executable, "-m", "imgfeat.cli", "extract", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < shards and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["webdataset", "sqlite"])
def test_killed_run_resumes_exactly_once(kind, tmp_path):
    """A real kill (SIGKILL mid-run, shards of 4) then a rerun: the output equals an
    uninterrupted run row for row, each id once, no temporary file left."""
    images = [_jpeg(tmp_path, i % 12 * 9) for i in range(40)] + [b"junk"]
    if kind == "webdataset":
        shard_dir = tmp_path / "shards"
        shard_dir.mkdir()
        for s in range(4):
            _tar(shard_dir / f"{s}.tar", [(f"k{s}-{i:02d}.jpg", d) for i, d in enumerate(images) if i % 4 == s])
        spec, extra = str(shard_dir), []
    else:
        if sqlalchemy is None:
            pytest.skip("SQL sources need imgfeat[sql] (SQLAlchemy)")
        spec, extra = f"sqlite:///{tmp_path / 'shop.sqlite'}", ["--table", "products"]
        _fill(spec, images, tmp_path)
    common = [spec, *extra, "--detector", "test-blob", "--embedder", "test-tiny", "--workers", "2",
              "--shard-size", "4", "--no-progress"]
    whole, out = tmp_path / "whole", tmp_path / "out"
    _kill_after_shards([*common, "-o", str(whole)], whole, 10 ** 6)  # to the end
    _kill_after_shards([*common, "-o", str(out)], out, 3)
    assert len(list(out.glob("part-*.parquet"))) < len(list(whole.glob("part-*.parquet")))  # it was cut short
    assert cli(["extract", *common, "-o", str(out)]) == 0
    expected, got = (pd.read_parquet(p).sort_values("id").reset_index(drop=True) for p in (whole, out))
    assert got.id.is_unique and len(got) == len(expected) == (41 if kind == "webdataset" else 43)
    pd.testing.assert_frame_equal(expected.drop(columns=["embedding", "image_embedding"], errors="ignore"),
                                  got.drop(columns=["embedding", "image_embedding"], errors="ignore"))
    assert not list(out.glob(".*tmp*"))
