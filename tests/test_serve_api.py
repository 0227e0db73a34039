"""The HTTP API in-process (FastAPI's TestClient) over a real index of sample photos,
extracted with the default models; a bad-request suite that must answer 4xx JSON, never 500;
the micro-batcher on its own. Tests over the real models are marked slow."""

from __future__ import annotations

import io
import json
import shutil
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import imgfeat
from conftest import AWKWARD, SAMPLES
from imgfeat.errors import ConfigError
from imgfeat.serve.batching import BatcherClosed, MicroBatcher

with warnings.catch_warnings():  # starlette asks for `httpx2`; plain httpx still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PHOTOS = ["dog.jpg", "horses.jpg", "chelsea_cat.png", "eagle.jpg", "coffee_cup.jpg", "astronaut.jpg"]
UPLOAD_CAP = 2 * 1024 * 1024


def _jpeg(path, side: int | None = None, quality: int = 90) -> bytes:
    with Image.open(path) as image:
        image = image.convert("RGB")
        if side:
            image.thumbnail((side, side))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Features of six sample photos plus a re-encoded smaller copy of dog.jpg (a duplicate),
    the saved index, the dedup groups, and a TestClient over the app."""
    from imgfeat.retrieval.dedup import find_duplicates
    from imgfeat.retrieval.index import FeatureIndex
    from imgfeat.serve import ServeConfig, create_app

    root = tmp_path_factory.mktemp("serve")
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy(SAMPLES / name, photos / name)
    # dog.jpg's main object is a near-tie (car 0.52, bicycle 0.47-0.54 by runtime and input
    # shape): a 500 px q80 copy tipped to the bicycle, a 640 px q80 one stays with the car
    # on onnxruntime fp32 and OpenVINO fp32/bf16 alike (cosine 0.96-0.97 to the original)
    (photos / "dog_copy.jpg").write_bytes(_jpeg(SAMPLES / "dog.jpg", side=640, quality=80))
    features = root / "features"
    imgfeat.extract(photos, features, workers=0, progress=False)
    FeatureIndex.build(features).save(root / "index")
    groups = find_duplicates(features, 0.9)
    groups.to_parquet(root / "groups.parquet")
    app = create_app(root / "index", groups_path=root / "groups.parquet", reviews_path=root / "reviews.jsonl",
                     config=ServeConfig(max_upload_bytes=UPLOAD_CAP, max_k=5))
    with TestClient(app, base_url="http://localhost", raise_server_exceptions=False) as client:
        yield {"client": client, "features": features, "root": root, "groups": groups,
               "frame": pd.read_parquet(features), "index": app.state.service.index}


def _row(served, name):
    frame = served["frame"]
    return frame[frame.path.str.endswith("/" + name)].iloc[0]


# --- the API --------------------------------------------------------------------------------

@pytest.mark.slow
def test_healthz_and_openapi(served):
    client = served["client"]
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["items"] == len(PHOTOS) + 1
    assert health["models"]["detector"] == "centernet-mbv3" and health["models"]["embedder"] == "mobilenet-v2"
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/embed", "/search", "/items/{item_id}", "/thumb/{item_id}", "/healthz", "/groups", "/reviews"):
        assert path in paths
    assert "multipart/form-data" in paths["/embed"]["post"]["requestBody"]["content"]


@pytest.mark.slow
def test_embed_matches_offline_extraction(served):
    """An upload is embedded exactly as the extraction embedded the same file."""
    client = served["client"]
    content = (SAMPLES / "horses.jpg").read_bytes()
    multipart = client.post("/embed", files={"image": ("whatever.txt", content, "text/plain")})
    raw = client.post("/embed", content=content, headers={"content-type": "application/octet-stream"})
    assert multipart.status_code == raw.status_code == 200
    body, offline = multipart.json(), _row(served, "horses.jpg")
    assert body["code_encoding"] == "hex" and len(body["code"]) == body["code_bits"] // 4
    embedding = np.asarray(body["embedding"], np.float32)
    assert embedding.shape == (served["index"].dim,)
    assert abs(float(np.linalg.norm(embedding)) - 1) < 1e-3
    assert float(embedding @ np.asarray(offline.embedding, np.float32)) > 0.999
    assert body["code"] == offline.code.hex()
    assert body["label"] == offline.label == "horse" and body["crop"] == "object"
    assert np.allclose(body["box"], offline.box, atol=1.0)
    assert (body["width"], body["height"]) == (offline.width, offline.height)
    assert raw.json()["code"] == body["code"]


@pytest.mark.slow
def test_search_finds_the_photo_and_its_copy(served):
    client = served["client"]
    response = client.post("/search?k=3", files={"image": ("dog.jpg", (SAMPLES / "dog.jpg").read_bytes())})
    assert response.status_code == 200
    answer = response.json()
    results = answer["results"]
    assert len(results) == 3 and answer["k"] == 3
    top_paths = {r["path"].rsplit("/", 1)[-1] for r in results[:2]}
    assert top_paths == {"dog.jpg", "dog_copy.jpg"}
    assert results[0]["score"] > 0.99
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    first = results[0]
    assert len(first["box"]) == 4 and first["width"] > 0 and served["index"].contains(first["id"])
    assert answer["query"]["box"] and answer["query"]["label"]


@pytest.mark.slow
def test_search_k_is_capped(served):
    response = served["client"].post("/search?k=1000", content=(SAMPLES / "eagle.jpg").read_bytes())
    assert response.status_code == 200
    assert response.json()["k"] == 5 and len(response.json()["results"]) == 5  # ServeConfig(max_k=5)


@pytest.mark.slow
def test_item_and_thumbnail(served):
    client = served["client"]
    offline = _row(served, "eagle.jpg")
    item = client.get(f"/items/{offline.id}").json()
    assert item["id"] == offline.id and item["path"] == offline.path and item["label"] == offline.label
    thumb = client.get(f"/thumb/{offline.id}")
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(thumb.content)) as image:
        assert image.format == "JPEG" and max(image.size) == 256
        assert image.size[0] > image.size[1]  # the eagle photo is landscape


@pytest.mark.slow
def test_page_and_static_files(served):
    client = served["client"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text and "/static/app.js" in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200


@pytest.mark.slow
def test_groups_and_not_duplicate_review(served):
    """The dog and its copy form a group; "not duplicate" is stored and the next dedup respects it."""
    from imgfeat.retrieval.dedup import find_duplicates, load_reviews

    client = served["client"]
    page = client.get("/groups?offset=0&limit=50").json()
    assert page["total"] == served["groups"]["group"].nunique() >= 1
    dog_ids = {_row(served, "dog.jpg").id, _row(served, "dog_copy.jpg").id}
    group = next(g for g in page["groups"] if {i["id"] for i in g["items"]} >= dog_ids)
    assert group["verdict"] is None
    assert sum(item["is_representative"] for item in group["items"]) == 1

    ids = [item["id"] for item in group["items"]]
    saved = client.post("/reviews", json={"ids": ids, "verdict": "not-duplicate"})
    assert saved.status_code == 201, saved.text
    reviews_path = served["root"] / "reviews.jsonl"
    record = json.loads(reviews_path.read_text().splitlines()[-1])
    assert record["ids"] == sorted(ids) and record["verdict"] == "not-duplicate"
    assert load_reviews(reviews_path)
    again = client.get("/groups?offset=0&limit=50").json()
    assert next(g for g in again["groups"] if g["group"] == group["group"])["verdict"] == "not-duplicate"

    regrouped = find_duplicates(served["features"], 0.9, reviews=reviews_path)
    members = regrouped.groupby("group")["id"].agg(set)
    assert not any(dog_ids <= m for m in members), "dedup still groups a pair marked not-duplicate"


# --- bad requests: 4xx JSON, never 500 --------------------------------------------------------

def _bad_requests():
    bomb = (AWKWARD / "bomb.png").read_bytes()
    return {
        "empty body": (dict(content=b""), 400),
        "non-image": (dict(content=b"just some text, not an image"), 415),
        "text file named .jpg": (dict(files={"image": ("photo.jpg", (AWKWARD / "text_named.jpg").read_bytes(),
                                                       "image/jpeg")}), 415),
        "truncated jpeg": (dict(content=(AWKWARD / "truncated.jpg").read_bytes()), 422),
        "decompression bomb": (dict(content=bomb, headers={"content-type": "image/png"}), 413),
        "bomb header jpeg": (dict(content=(AWKWARD / "bomb_header.jpg").read_bytes()), 413),
        "oversized body": (dict(content=b"\xff\xd8" + bytes(UPLOAD_CAP)), 413),
        "huge declared content-length": (dict(content=b"abc", headers={"content-length": str(10 ** 12)}), 413),
        "invalid content-length": (dict(content=b"abc", headers={"content-length": "-1"}), 400),
        "json instead of image": (dict(json={"image": "aGVsbG8="}), 415),
        "form instead of image": (dict(data={"image": "hello"}), 415),
        "multipart without boundary": (dict(content=b"--x\r\n\r\nabc\r\n--x--\r\n",
                                            headers={"content-type": "multipart/form-data"}), 400),
        "multipart garbage": (dict(content=b"\x00\x01garbage",
                                   headers={"content-type": "multipart/form-data; boundary=zz"}), 400),
        "multipart wrong field": (dict(files={"file": ("a.jpg", (SAMPLES / "dog.jpg").read_bytes())}), 400),
        "multipart field not a file": (dict(data={"image": "abc"}, files={"other": ("a", b"1")}), 400),
        "multipart empty file": (dict(files={"image": ("a.jpg", b"")}), 400),
    }


BAD_UPLOADS = _bad_requests()


@pytest.mark.slow
@pytest.mark.parametrize("route", ["/embed", "/search"])
@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_a_clear_4xx(served, route, case):
    kwargs, status = BAD_UPLOADS[case]
    response = served["client"].post(route, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] and body["detail"]


@pytest.mark.slow
@pytest.mark.parametrize("method, url, status", [
    ("get", "/items/0000000000000000", 404),
    ("get", "/thumb/0000000000000000", 404),
    ("get", "/thumb/../../etc/passwd", 404),
    ("get", "/thumb/..%2F..%2F..%2Fetc%2Fpasswd", 404),
    ("get", "/items/..%2f..%2fREADME.md", 404),
    ("get", "/thumb/%2e%2e%2f%2e%2e%2fetc%2fpasswd", 404),
    ("get", "/thumb/%2e%2e", 404),
    ("get", "/thumb/" + "a" * 5000, 404),
    ("get", "/static/../app.py", 404),
    ("get", "/static/%2e%2e/service.py", 404),
    ("get", "/no/such/route", 404),
    ("get", "/embed", 405),
    ("post", "/search?k=0", 422),
    ("post", "/search?k=ten", 422),
    ("get", "/groups?limit=100000", 422),
    ("get", "/groups?offset=-1", 422),
])
def test_bad_url_is_a_clear_4xx(served, method, url, status):
    response = getattr(served["client"], method)(url)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}


@pytest.mark.slow
def test_traversal_never_reads_files_outside_the_index(served):
    """Ids are looked up in the index: a path-like id cannot name a file, even one that exists."""
    client = served["client"]
    photo = str(served["root"] / "photos" / "dog.jpg")
    # (a bare ".." would be resolved away by the client: test_serve_load sends raw paths)
    for item_id in (photo, photo.replace("/", "%2F"), "dog.jpg", "%2e%2e", "~root"):
        assert client.get(f"/thumb/{item_id}").status_code == 404
        assert client.get(f"/items/{item_id}").status_code == 404


@pytest.mark.slow
@pytest.mark.parametrize("payload, status", [
    (b"{not json", 422),
    (json.dumps({"ids": ["only-one"]}).encode(), 422),
    (json.dumps({"ids": ["0000000000000000", "1111111111111111"]}).encode(), 422),
    (json.dumps({"ids": ["a", "b"], "verdict": "maybe"}).encode(), 422),
    (json.dumps(["not", "an", "object"]).encode(), 422),
])
def test_bad_review_is_a_clear_4xx(served, payload, status):
    response = served["client"].post("/reviews", content=payload, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "detail"}


@pytest.mark.slow
def test_no_groups_file_says_how_to_get_one(served):
    from imgfeat.serve import create_app

    with TestClient(create_app(served["index"]), base_url="http://localhost") as client:
        response = client.get("/groups")
        assert response.status_code == 404 and "--groups" in response.json()["detail"]
        assert client.post("/reviews", json={"ids": ["a", "b"]}).status_code == 404


# --- the micro-batcher ----------------------------------------------------------------------

def test_batcher_gathers_concurrent_jobs_into_batches():
    sizes = []

    def double(jobs):
        sizes.append(len(jobs))
        time.sleep(0.05)
        return [job * 2 for job in jobs]

    batcher = MicroBatcher(double, max_batch=8, max_wait_s=0.02)
    try:
        futures = [batcher.submit(i) for i in range(20)]
        assert [f.result(timeout=10) for f in futures] == [i * 2 for i in range(20)]
    finally:
        batcher.close()
    assert sum(sizes) == 20 and max(sizes) == 8 and len(sizes) <= 4
    assert batcher.stats.batches == len(sizes) and batcher.stats.largest == 8
    with pytest.raises(BatcherClosed):
        batcher.submit(1)


def test_batcher_fails_the_batch_not_the_worker():
    def fussy(jobs):
        if "bad" in jobs:
            raise ValueError("bad job")
        return [job.upper() for job in jobs]

    batcher = MicroBatcher(fussy, max_batch=4, max_wait_s=0.0)
    try:
        with pytest.raises(ValueError, match="bad job"):
            batcher.submit("bad").result(timeout=10)
        assert batcher.submit("fine").result(timeout=10) == "FINE"  # the worker survived
    finally:
        batcher.close()


def test_batcher_from_many_threads():
    batcher = MicroBatcher(lambda jobs: [(job, len(jobs)) for job in jobs], max_batch=16, max_wait_s=0.01)
    results = {}

    def call(i):
        results[i] = batcher.submit(i).result(timeout=10)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        batcher.close()
    assert sorted(results) == list(range(32)) and all(results[i][0] == i for i in results)
    assert max(size for _, size in results.values()) > 1


def test_batcher_checks_its_arguments():
    with pytest.raises(ConfigError):
        MicroBatcher(lambda jobs: jobs, max_batch=0)
