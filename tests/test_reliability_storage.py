"""Flaky and unreachable storage (issue 10, item 6): transient read failures are retried with
backoff and lose nothing; without retries they are `unreachable:`/`timeout:` rows that
--retry-errors repairs in place; a remote input this machine cannot read is a clear error
before the run or an error row, never a crash."""

from __future__ import annotations

import importlib.util
import random
import socket
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from fsspec import register_implementation
from fsspec.implementations.memory import MemoryFileSystem

import imgfeat
from imgfeat.cli import main
from imgfeat.errors import SourceError
from imgfeat.storage import NO_RETRY, ReadFailure, Retry, classify, read_bytes

from conftest import FAST_MODELS, blob_image


class FlakyFileSystem(MemoryFileSystem):
    """An in-memory store whose reads fail transiently: a seeded `rate` of its files fail their
    first one or two opens with ConnectionError or TimeoutError, as a remote store does."""

    protocol = "flaky"
    store: dict = {}
    pseudo_dirs = [""]
    rate = 0.0
    seed = 0
    opens: Counter = Counter()
    injected: Counter = Counter()
    lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("flaky://"))

    @classmethod
    def plan(cls, path: str) -> tuple[int, type[Exception]]:
        """How many opens of `path` fail, and with what."""
        draw = random.Random(f"{cls.seed}:{path}")
        if draw.random() >= cls.rate:
            return 0, ConnectionError
        return draw.choice((1, 2)), draw.choice((ConnectionError, TimeoutError))

    def _open(self, path, mode="rb", **kwargs):
        if "r" in mode:
            path = self._strip_protocol(path)
            failures, error = self.plan(path)
            with self.lock:
                self.opens[path] += 1
                attempt = self.opens[path]
            if attempt <= failures:
                with self.lock:
                    self.injected[error.__name__] += 1
                raise error(f"injected transient failure {attempt} of {failures} on {path}")
        return super()._open(path, mode, **kwargs)

    @classmethod
    def reset(cls, rate: float, seed: int = 0) -> None:
        cls.rate, cls.seed = rate, seed
        cls.opens.clear()
        cls.injected.clear()


register_implementation("flaky", FlakyFileSystem, clobber=True)
COUNT = 40


@pytest.fixture
def flaky_photos(tmp_path) -> str:
    FlakyFileSystem.store.clear()
    FlakyFileSystem.pseudo_dirs[:] = [""]
    fs = FlakyFileSystem()
    for i in range(COUNT):
        path = blob_image(tmp_path / f"p{i:02d}.png", offset=i % 50, size=(120, 90))
        fs.pipe_file(f"/photos/p{i:02d}.png", path.read_bytes())
    fs.pipe_file("/photos/broken.jpg", b"\xff\xd8 not a jpeg")
    FlakyFileSystem.reset(0.0)
    yield "flaky://photos"
    FlakyFileSystem.reset(0.0)


def same_rows(a: Path, b: Path, exact: bool = True) -> None:
    """Row for row the same output. `exact=False`: rows recomputed in a batch of another size
    may differ in the last float bits (batched BLAS), so embeddings are compared to 1e-5 and
    binary codes to within 2 bits."""
    fa, fb = imgfeat.read_features(a).to_pandas(), imgfeat.read_features(b).to_pandas()
    assert fa.id.tolist() == fb.id.tolist() and fa.id.is_unique
    assert fa.path.tolist() == fb.path.tolist()
    assert fa.status.tolist() == fb.status.tolist()
    assert fa.error.tolist() == fb.error.tolist()
    for x, y, cx, cy in zip(fa.embedding, fb.embedding, fa.code, fb.code):
        if x is None or y is None:
            assert x is None and y is None and cx is None and cy is None
        elif exact:
            assert np.array_equal(np.asarray(x), np.asarray(y)) and cx == cy
        else:
            assert np.allclose(np.asarray(x), np.asarray(y), atol=1e-5)
            flipped = np.unpackbits(np.frombuffer(cx, np.uint8) ^ np.frombuffer(cy, np.uint8)).sum()
            assert flipped <= 2


def test_retries_make_flaky_storage_equal_the_clean_run(flaky_photos, tmp_path):
    imgfeat.extract(flaky_photos, tmp_path / "clean", **FAST_MODELS, shard_size=8)
    FlakyFileSystem.reset(rate=0.3, seed=1)
    report = imgfeat.extract(flaky_photos, tmp_path / "flaky", **FAST_MODELS, shard_size=8,
                             retries=3, retry_wait=0.0)
    injected = sum(FlakyFileSystem.injected.values())
    assert injected >= 10 and set(FlakyFileSystem.injected) == {"ConnectionError", "TimeoutError"}
    assert report.failed == 1 and report.errors == {"not-an-image": 1}
    same_rows(tmp_path / "flaky", tmp_path / "clean")
    print(f"\nflaky storage: {injected} transient read failures injected "
          f"({dict(FlakyFileSystem.injected)}) over {COUNT + 1} inputs, 3 tries each: output equal to the "
          f"clean run, 0 rows lost")


def test_without_retries_failures_are_transient_rows_that_retry_errors_repairs(flaky_photos, tmp_path, capsys):
    imgfeat.extract(flaky_photos, tmp_path / "clean", **FAST_MODELS, shard_size=8)
    FlakyFileSystem.reset(rate=0.3, seed=2)
    out = tmp_path / "out"
    report = imgfeat.extract(flaky_photos, out, **FAST_MODELS, shard_size=8, retries=1)
    expected = {k.replace("ConnectionError", "unreachable").replace("TimeoutError", "timeout"): v
                for k, v in FlakyFileSystem.injected.items()}
    assert report.errors == dict(expected, **{"not-an-image": 1})
    kinds = Counter(e.split(":")[0] for e in imgfeat.read_features(out).to_pandas().error.dropna())
    assert kinds == Counter(dict(expected, **{"not-an-image": 1})) and kinds["unreachable"] and kinds["timeout"]

    FlakyFileSystem.reset(0.0)
    code = main(["extract", flaky_photos, "-o", str(out), "--shard-size", "8", "--retry-errors",
                 "--detector", "test-blob", "--embedder", "test-tiny", "--workers", "0", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert f"{sum(expected.values())} failed rows retried" in capsys.readouterr().out
    assert sum(FlakyFileSystem.opens.values()) == sum(expected.values())  # only the transient rows read
    same_rows(out, tmp_path / "clean", exact=False)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_retry_backs_off_and_gives_up_after_its_attempts(monkeypatch):
    slept = []
    monkeypatch.setattr("imgfeat.storage.time.sleep", slept.append)
    FlakyFileSystem.store.clear()
    FlakyFileSystem().pipe_file("/one.png", b"x")
    FlakyFileSystem.reset(1.0, seed=0)
    failures, _ = FlakyFileSystem.plan("/one.png")
    assert read_bytes("flaky://one.png", 10, Retry(attempts=3, wait=0.5)) == b"x"
    assert slept == [0.5, 1.0][:failures]
    FlakyFileSystem.reset(1.0, seed=0)
    with pytest.raises(ReadFailure) as failure:
        read_bytes("flaky://one.png", 10, NO_RETRY)
    assert failure.value.kind in ("unreachable", "timeout")
    assert list(Retry(attempts=6, wait=1, max_wait=4).delays()) == [1, 2, 4, 4, 4]


@pytest.mark.parametrize("exc, kind", [
    (ConnectionRefusedError(111, "Connection refused"), "unreachable"),
    (TimeoutError("read timed out"), "timeout"),
    (type("ServerTimeoutError", (Exception,), {})("aiohttp"), "timeout"),
    (type("EndpointConnectionError", (Exception,), {})("botocore"), "unreachable"),
    (type("ClientResponseError", (Exception,), {"status": 503})("busy"), "unreachable"),
    (type("ClientResponseError", (Exception,), {"status": 404})("gone"), "not-found"),
    (FileNotFoundError(2, "No such file"), "not-found"),
    (PermissionError(13, "Permission denied"), "read-error"),
    (KeyError("whatever"), "read-error"),
])
def test_network_failures_get_their_own_kind(exc, kind):
    assert classify(exc).kind == kind


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again on leaving: nothing listens there


def test_list_with_s3_and_dead_http_lines_is_a_clear_error_or_error_rows(tmp_path, capsys):
    good = blob_image(tmp_path / "good.png")
    missing_s3 = importlib.util.find_spec("s3fs") is None
    missing_http = importlib.util.find_spec("aiohttp") is None
    listing = tmp_path / "list.txt"
    listing.write_text(f"{good}\ns3://imgfeat-no-such-bucket/x.jpg\n"
                       f"http://127.0.0.1:{closed_port()}/x.jpg\n")
    cli = ["extract", str(listing), "-o", str(tmp_path / "out"), "--retries", "1",
           "--detector", "test-blob", "--embedder", "test-tiny", "--workers", "0", "--no-progress"]
    if missing_s3 or missing_http:  # one clear line before the run, naming what to install
        with pytest.raises(SourceError, match=r"(s3|http)://.*cannot read"):
            imgfeat.extract(listing, tmp_path / "out", **FAST_MODELS)
        assert main(cli) == 1
        error = capsys.readouterr().err
        assert error.startswith("imgfeat: error:") and len(error.splitlines()) == 1
        assert not (tmp_path / "out").exists()  # refused before anything was written
    else:  # both clients installed: the dead endpoints are error rows, the good image is kept
        assert main(cli) == 0
        frame = imgfeat.read_features(tmp_path / "out").to_pandas().set_index("path")
        assert frame.loc[str(good)].status == "ok"
        http = frame[frame.index.str.startswith("http")].error.iloc[0]
        assert http.startswith("unreachable:"), http


def test_dead_http_endpoint_is_an_unreachable_row_when_the_client_is_installed(tmp_path):
    pytest.importorskip("aiohttp", reason="reading http:// needs aiohttp (not installed here)")
    with pytest.raises(ReadFailure) as failure:
        read_bytes(f"http://127.0.0.1:{closed_port()}/x.jpg", 1000, NO_RETRY)
    assert failure.value.kind == "unreachable"


def test_an_output_on_a_store_without_its_package_is_one_clear_error(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("s3fs") is not None:
        pytest.skip("s3fs is installed here: the missing-package path cannot be reached")
    from imgfeat.cli import main

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"not read")
    assert main(["extract", str(photos), "-o", "s3://bucket/out", "--detector", "test-blob",
                 "--embedder", "test-tiny", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[-1]] and err[-1].startswith("imgfeat: error: writing s3:// outputs needs a package")
