"""The service's defences, over a small index made with the tiny test models: Host check
(DNS rebinding), bearer token, CSP and /docs, upload pixel cap and decode bound, slow headers
and bodies, connection limit, an unwritable reviews file, unexpected errors as JSON, and the
/groups member fields. The schema-driven fuzz suite is tests/test_serve_fuzz.py."""

from __future__ import annotations

import io
import json
import shutil
import socket
import threading
import time
import warnings

import pytest
from PIL import Image

import imgfeat
from conftest import FAST_MODELS, blob_image

with warnings.catch_warnings():  # starlette asks for `httpx2`; plain httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "0123456789abcdef0123"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Features of six blob images (two of them byte-identical copies), the index and the groups."""
    from imgfeat.retrieval.dedup import find_duplicates
    from imgfeat.retrieval.index import FeatureIndex

    root = tmp_path_factory.mktemp("serve-security")
    photos = root / "photos"
    photos.mkdir()
    for i in range(5):
        blob_image(photos / f"blob{i}.png", offset=i * 20, colour=(40 + 40 * i, 30, 200 - 30 * i))
    shutil.copy(photos / "blob0.png", photos / "blob0_copy.png")
    imgfeat.extract(photos, root / "features", **FAST_MODELS)
    index = FeatureIndex.build(root / "features")
    index.save(root / "index")
    find_duplicates(root / "features", 0.99).to_parquet(root / "groups.parquet")
    return {"root": root, "index": index, "upload": (photos / "blob1.png").read_bytes()}


def _app(made, bind="127.0.0.1", reviews=None, **options):
    from imgfeat.serve import ServeConfig, create_app

    root = made["root"]
    return create_app(made["index"], groups_path=root / "groups.parquet",
                      reviews_path=reviews or root / "reviews.jsonl", config=ServeConfig(**options), bind=bind)


@pytest.fixture(scope="module")
def client(made):
    with TestClient(_app(made), base_url="http://127.0.0.1:8000", raise_server_exceptions=False) as client:
        yield client


def _json_error(response, status):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] and body["detail"]
    return body


# --- Host header ---------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example",
                                  "10.0.0.5", ""])
def test_a_foreign_host_header_is_refused(client, host):
    """A page on evil.example whose name resolves to 127.0.0.1 (DNS rebinding) reads nothing."""
    for method, url, kwargs in [("get", "/items/x", {}), ("get", "/groups", {}), ("get", "/healthz", {}),
                                ("post", "/reviews", {"json": {"ids": ["a", "b"]}})]:
        response = getattr(client, method)(url, headers={"host": host}, **kwargs)
        assert "unknown-host" == _json_error(response, 421)["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1"])
def test_local_host_headers_are_answered(client, host):
    assert client.get("/healthz", headers={"host": host}).status_code == 200


def test_allowed_hosts_and_wildcard_binds(made):
    from imgfeat.serve.security import host_allowed, hosts_for

    with TestClient(_app(made, allowed_hosts=("photos.lan",)), base_url="http://photos.lan:8000") as named:
        assert named.get("/healthz").status_code == 200
        assert named.get("/healthz", headers={"host": "other.lan"}).status_code == 421
    wildcard = hosts_for("0.0.0.0")
    assert host_allowed("192.168.1.20:8000", wildcard) and host_allowed("[fe80::1]:80", wildcard)
    assert not host_allowed("nas.example", wildcard)  # a name is what rebinding needs
    assert host_allowed("10.1.2.3", hosts_for("10.1.2.3")) and not host_allowed("10.1.2.4", hosts_for("10.1.2.3"))


# --- token ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def locked(made):
    with TestClient(_app(made, token=TOKEN), base_url="http://localhost", raise_server_exceptions=False) as client:
        yield client


def test_token_is_required_everywhere_but_healthz_and_the_page(locked, made):
    for method, url, kwargs in [("get", "/items/x", {}), ("get", "/groups", {}), ("get", "/openapi.json", {}),
                                ("post", "/search", {"content": made["upload"]}),
                                ("post", "/embed", {"content": made["upload"]}),
                                ("post", "/reviews", {"json": {"ids": ["a", "b"]}}), ("get", "/thumb/x", {})]:
        call = getattr(locked, method)
        response = call(url, **kwargs)
        assert _json_error(response, 401)["error"] == "unauthorised"
        assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = call(url, headers={"authorization": "Bearer " + TOKEN[:-1] + "x"}, **kwargs)
        _json_error(wrong, 401)
        right = call(url, headers={"authorization": f"Bearer {TOKEN}"}, **kwargs)
        assert right.status_code not in (401, 421), (url, right.text)
    assert locked.get("/healthz").status_code == 200
    assert locked.get("/").status_code == 200 and locked.get("/static/app.js").status_code == 200


def test_token_cookie_from_the_page(locked):
    """The page turns #token=... into the imgfeat_token cookie; thumbnails and fetches send it."""
    assert locked.get("/groups", headers={"cookie": f"theme=dark; imgfeat_token={TOKEN}"}).status_code == 200
    assert locked.get("/groups", headers={"cookie": "imgfeat_token=nope"}).status_code == 401
    assert "imgfeat_token" in locked.get("/static/app.js").text


def test_token_must_be_long_enough():
    from imgfeat.errors import ConfigError
    from imgfeat.serve import ServeConfig

    with pytest.raises(ConfigError, match="16"):
        ServeConfig(token="short")


def test_cli_refuses_a_network_bind_without_a_token(made, capsys, monkeypatch):
    from imgfeat.cli import main

    monkeypatch.delenv("IMGFEAT_TOKEN", raising=False)
    code = main(["serve", "--index", str(made["root"] / "index"), "--host", "0.0.0.0"])
    assert code != 0
    err = capsys.readouterr().err
    assert "IMGFEAT_TOKEN" in err and "--no-token" in err and "Traceback" not in err


# --- headers, CSP, /docs -------------------------------------------------------------------

def test_csp_on_the_page_and_the_api(client):
    from imgfeat.serve.security import API_CSP, PAGE_CSP

    page = client.get("/")
    assert page.headers["content-security-policy"] == PAGE_CSP
    assert "script-src 'self'" in PAGE_CSP and "unsafe-inline" not in PAGE_CSP
    api = client.get("/healthz")
    assert api.headers["content-security-policy"] == API_CSP
    assert api.headers["x-content-type-options"] == "nosniff" and api.headers["referrer-policy"] == "no-referrer"
    assert "server" not in api.headers


def test_docs_off_by_default_and_hashed_when_on(client, made):
    _json_error(client.get("/docs"), 404)
    _json_error(client.get("/redoc"), 404)
    assert client.get("/openapi.json").status_code == 200  # the schema stays available
    with TestClient(_app(made, docs=True), base_url="http://localhost") as with_docs:
        docs = with_docs.get("/docs")
        assert docs.status_code == 200 and "swagger-ui" in docs.text
        csp = docs.headers["content-security-policy"]
        assert "'sha256-" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp


# --- limits --------------------------------------------------------------------------------

def _png(width, height) -> bytes:
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG")  # 1-bit: tiny and quick to write
    return out.getvalue()


def test_uploads_get_a_lower_pixel_cap_than_extraction(client, made):
    from imgfeat.serve.service import UPLOAD_MAX_PIXELS, ServeConfig, pipeline_config_for

    index_cap = made["index"].config["decode"]["max_pixels"]
    assert index_cap > UPLOAD_MAX_PIXELS
    assert pipeline_config_for(made["index"].config, ServeConfig()).decode.max_pixels == UPLOAD_MAX_PIXELS
    assert pipeline_config_for(made["index"].config, ServeConfig(max_pixels=10**8)).decode.max_pixels == 10**8
    big = _png(7000, 7000)  # 49 Mpx: within the extraction cap, over the upload cap
    assert len(big) < 200_000
    assert _json_error(client.post("/embed", content=big), 413)["error"] == "too-large"


def test_decodes_are_bounded(made, monkeypatch):
    """However many requests decode at once, at most max_decodes are inside decode_image."""
    from imgfeat.serve import service as service_module

    app = _app(made, max_decodes=2)
    real, inside, most, lock = service_module.decode_image, [0], [0], threading.Lock()

    def counting(content, config):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.05)
        try:
            return real(content, config)
        finally:
            with lock:
                inside[0] -= 1

    monkeypatch.setattr(service_module, "decode_image", counting)
    service = app.state.service
    try:
        threads = [threading.Thread(target=service.decode, args=(made["upload"],)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        service.close()
    assert most[0] == 2


@pytest.fixture()
def live(made):
    from imgfeat.serve.background import BackgroundServer

    app = _app(made, body_timeout_s=1.0, header_timeout_s=1.0, max_connections=4)
    with BackgroundServer(app) as server:
        yield server


def _recv_all(sock, timeout):
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except socket.timeout:
        chunks.append(b"<timeout>")
    return b"".join(chunks)


@pytest.mark.parametrize("route, media_type", [("/embed", b"image/png"), ("/reviews", b"application/json")])
def test_a_slow_body_is_cut_off_with_408(live, route, media_type):
    with socket.create_connection((live.host, live.port)) as sock:
        sock.sendall(b"POST " + route.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + media_type
                     + b"\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        sock.settimeout(0.2)
        answer = b""
        while time.monotonic() - started < 5 and not answer:
            try:
                sock.sendall(b"x")  # one byte at a time, forever
                answer = sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
        elapsed = time.monotonic() - started
        sock.settimeout(2)
        while answer and not answer.endswith(b"}"):  # the head and the body may come apart
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"error":"request-timeout"' in answer
    assert elapsed < 10  # the deadline is 1 s; a busy 2-core machine may take a few more


def test_slow_headers_and_idle_connections_are_closed(live):
    with socket.create_connection((live.host, live.port)) as idle, \
            socket.create_connection((live.host, live.port)) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\n")  # the head never ends
        started = time.monotonic()
        assert _recv_all(idle, 8) == b"" and _recv_all(slow, 8) == b""
        assert time.monotonic() - started < 12
    with socket.create_connection((live.host, live.port)) as kept:  # the second request on a connection
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        kept.settimeout(5)
        answer = b""
        while not answer.endswith(b"}"):  # the whole first response (JSON)
            answer += kept.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        kept.sendall(b"GET /healthz HTTP/1.1\r\n")
        assert _recv_all(kept, 12) == b"" and time.monotonic() - started < 10


def test_connections_over_the_limit_get_503(live):
    held = [socket.create_connection((live.host, live.port)) for _ in range(4)]
    try:
        time.sleep(0.2)
        with socket.create_connection((live.host, live.port)) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert _recv_all(extra, 5).startswith(b"HTTP/1.1 503")
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    with socket.create_connection((live.host, live.port)) as again:  # the limit frees up
        again.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert _recv_all(again, 5).startswith(b"HTTP/1.1 200")


# --- reviews, unexpected errors ------------------------------------------------------------

def test_unwritable_reviews_file_is_a_json_503(made, tmp_path):
    (tmp_path / "not-a-folder").write_text("a file where the reviews folder should be")
    app = _app(made, reviews=tmp_path / "not-a-folder" / "reviews.jsonl")
    assert "cannot write reviews" in app.state.service.duplicates.reviews_problem  # found at start-up
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        page = client.get("/groups")
        assert page.status_code == 200 and page.json()["total"] >= 1  # still viewable
        ids = [item["id"] for item in page.json()["groups"][0]["items"]]
        assert _json_error(client.post("/reviews", json={"ids": ids}), 503)["error"] == "reviews-unwritable"


def test_a_failing_write_after_start_up_is_a_json_503(made, tmp_path, monkeypatch):
    import errno

    from imgfeat.retrieval import reviews

    reviews_path = tmp_path / "reviews.jsonl"
    reviews_path.write_text(json.dumps({"ids": ["p", "q"], "verdict": "not-duplicate"}) + "\n")
    with TestClient(_app(made, reviews=reviews_path), base_url="http://localhost",
                    raise_server_exceptions=False) as client:
        ids = [item["id"] for item in client.get("/groups").json()["groups"][0]["items"]]

        def full_disk(*_args, **_kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(reviews, "atomic_write", full_disk)
        body = _json_error(client.post("/reviews", json={"ids": ids}), 503)
        assert "No space left" in body["detail"]
    assert json.loads(reviews_path.read_text())["ids"] == ["p", "q"]  # the previous file is intact


def test_an_unexpected_exception_is_a_json_500(made, monkeypatch):
    app = _app(made)
    monkeypatch.setattr(app.state.service, "item", lambda item_id: 1 / 0)
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        body = _json_error(client.get("/items/x"), 500)
        assert body["error"] == "internal-error" and "Traceback" not in body["detail"]


# --- /groups members -----------------------------------------------------------------------

def test_groups_report_the_detector_score_and_crop(client, made):
    """`score` is the cosine to the representative; detector_score and crop are the member's own."""
    groups = client.get("/groups").json()["groups"]
    assert groups, "the two identical blob images should form a group"
    for group in groups:
        for member in group["items"]:
            indexed = client.get(f"/items/{member['id']}").json()
            assert member["detector_score"] == indexed["detector_score"] is not None
            assert member["crop"] == indexed["crop"] is not None
            assert member["box"] == indexed["box"] and member["label"] == indexed["label"]
            assert -1 <= member["score"] <= 1.0001
    # the identical copies: cosine 1, but the detector's score is its own figure
    assert any(abs(m["score"] - 1) < 1e-4 and abs(m["detector_score"] - m["score"]) > 1e-3
               for g in groups for m in g["items"])
