"""The service under load on loopback: `imgfeat serve` in a subprocess (uvicorn on 127.0.0.1,
a free port), 8 concurrent clients, a few hundred searches, bounded in time; prints requests/s
and p50/p99 latency and asserts zero errors. Also raw HTTP requests (paths a client would
normalise, a lying Content-Length) against the live server.

By default the index and the uploads use the tiny test models, so the figures measure the
service itself (HTTP, decode, micro-batching, search). For figures with the real default
models (docs/serving.md):

    IMGFEAT_SERVE_LOAD_MODELS=default pytest tests/test_serve_load.py -s -k load
"""

from __future__ import annotations

import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx
import pytest
from PIL import Image

import imgfeat
from conftest import FAST_MODELS, SAMPLES, blob_image
from imgfeat.config import PipelineConfig
from imgfeat.decode import decode_image
from imgfeat.sources import Item
from imgfeat.stages import Features, ImageBatch

REAL_MODELS = os.environ.get("IMGFEAT_SERVE_LOAD_MODELS", "fast") == "default"
CLIENTS = 8
REQUESTS_PER_CLIENT = 40 if not REAL_MODELS else 25
TIME_LIMIT_S = 90.0 if not REAL_MODELS else 600.0


def _jpeg(path, side: int) -> bytes:
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((side, side))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
    return out.getvalue()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """An index, a few upload bodies, and the app served by uvicorn on 127.0.0.1."""
    from imgfeat.retrieval.index import FeatureIndex
    from imgfeat.serve.service import ServeConfig, pipeline_config_for

    root = tmp_path_factory.mktemp("serve-load")
    photos = root / "photos"
    photos.mkdir()
    if REAL_MODELS:
        sources = sorted(p for p in SAMPLES.iterdir() if p.suffix in (".jpg", ".png"))
        uploads = [_jpeg(p, 320) for p in sources[:8]]
        options = {"workers": 0, "progress": False}
        for path in sources:
            (photos / path.name).write_bytes(path.read_bytes())
    else:
        for i in range(24):
            blob_image(photos / f"blob{i}.jpg", offset=i * 5, colour=(40 + 8 * i, 30, 200 - 6 * i))
        uploads = [(photos / f"blob{i}.jpg").read_bytes() for i in range(0, 24, 3)]
        options = dict(FAST_MODELS)
    imgfeat.extract(photos, root / "features", **options)
    index = FeatureIndex.build(root / "features")
    index.save(root / "index")
    server, url, port = _start_server(root)
    try:
        yield {"url": url, "host": "127.0.0.1", "port": port, "uploads": uploads,
               "config": pipeline_config_for(index.config, ServeConfig())}
    finally:
        server.terminate()
        server.wait(timeout=30)


def _start_server(root, attempts: int = 3) -> tuple[subprocess.Popen, str, int]:
    """`imgfeat serve` on a free port; another process may take the port between the probe and
    the server's bind, so a start that fails with the address in use is tried on a new port."""
    for attempt in range(attempts):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        command = [sys.executable, "-m", "imgfeat.cli", "serve", "--index", str(root / "index"), "--port", str(port)]
        url = f"http://127.0.0.1:{port}"
        log_path = root / f"serve-{attempt}.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_up(url, server, log_path)
            return server, url, port
        except AssertionError:
            server.terminate()
            server.wait(timeout=30)
            if "address already in use" not in log_path.read_text().lower() or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _wait_until_up(url: str, server: subprocess.Popen, log_path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"imgfeat serve exited with {server.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"imgfeat serve did not answer on {url} within {timeout} s")


def _client_loop(url: str, uploads: list[bytes], count: int, offset: int, deadline: float,
                 latencies: list[float], errors: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=60.0) as client:
        for i in range(count):
            if time.monotonic() > deadline:
                errors.append("deadline passed")
                return
            body = uploads[(offset + i) % len(uploads)]
            start = time.perf_counter()
            try:
                response = client.post("/search?k=5", content=body)
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - start)
            if response.status_code != 200 or len(response.json()["results"]) != 5:
                errors.append(f"{response.status_code}: {response.text[:200]}")


def _offline_images_per_second(config: PipelineConfig, uploads: list[bytes], count: int) -> float:
    """Decode + Features in batches of 16 in this process: what the offline runner's loop does."""
    features = Features(config)
    bodies = [uploads[i % len(uploads)] for i in range(count)]
    features(ImageBatch([Item("warm", "warm")], [decode_image(bodies[0], config.decode)]))
    start = time.perf_counter()
    for i in range(0, count, 16):
        chunk = bodies[i:i + 16]
        features(ImageBatch([Item(str(j), "x") for j in range(len(chunk))],
                            [decode_image(body, config.decode) for body in chunk]))
    return count / (time.perf_counter() - start)


@pytest.mark.slow  # a load test: seconds of 8 clients, with a time limit
def test_load_eight_clients(live):
    url, uploads = live["url"], live["uploads"]
    httpx.post(f"{url}/search", content=uploads[0], timeout=60.0).raise_for_status()  # warm up
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + TIME_LIMIT_S
    threads = [threading.Thread(target=_client_loop,
                                args=(url, uploads, REQUESTS_PER_CLIENT, i, deadline, latencies, errors))
               for i in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIME_LIMIT_S + 30)
    seconds = time.perf_counter() - start
    assert not any(thread.is_alive() for thread in threads), "clients still running after the time limit"
    batching = httpx.get(f"{url}/healthz").json()["batching"]

    latencies.sort()
    figures = {
        "models": "default (centernet-mbv3 + mobilenet-v2)" if REAL_MODELS else "test (test-blob + test-tiny)",
        "clients": CLIENTS, "requests": len(latencies), "errors": len(errors), "seconds": round(seconds, 2),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[max(0, int(round(0.99 * len(latencies))) - 1)], 1),
        "mean_batch": batching["mean_batch"], "largest_batch": batching["largest_batch"],
        "offline_images_per_s": round(_offline_images_per_second(live["config"], uploads, 64), 1),
    }
    print("\nserve load:", json.dumps(figures))
    assert errors == [], errors[:5]
    assert len(latencies) == CLIENTS * REQUESTS_PER_CLIENT
    assert batching["largest_batch"] > 1, "concurrent requests were never batched together"


def _raw_request(live, request: bytes) -> tuple[int, bytes]:
    with socket.create_connection((live["host"], live["port"]), timeout=20) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("path", [
    "/thumb/../../../../etc/passwd", "/items/../../etc/passwd", "/thumb/..%2F..%2F..%2Fetc%2Fpasswd",
    "/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd", "/thumb/..", "/static/../app.py", "/static/..%2fapp.py",
    "/static/%2e%2e/service.py", "/static/../../../../etc/passwd", "/static//etc/passwd",
])
def test_raw_traversal_paths_get_404_json(live, path):
    """Paths sent as-is (an HTTP client would resolve the dot segments first)."""
    status, body = _raw_request(live, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    assert status == 404, body[:200]
    assert set(json.loads(body)) == {"error", "detail"}
    assert b"root:" not in body and b"def " not in body


def test_lying_content_length_is_refused_before_reading(live):
    """A 1 TB Content-Length with a few bytes behind it: 413 at once, no waiting for the body."""
    start = time.monotonic()
    status, body = _raw_request(live, b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                                      b"Content-Length: 1000000000000\r\nConnection: close\r\n\r\n\xff\xd8\xff")
    assert status == 413 and json.loads(body)["error"] == "too-large"
    assert time.monotonic() - start < 10
