"""Schema-driven fuzzing of the HTTP API (schemathesis over /openapi.json, in-process ASGI):
valid and invalid paths, queries, JSON and image bodies for every operation, a bounded and
derandomised number of examples each. The service must never answer 5xx, and every error must
be the JSON {"error", "detail"} body. The app runs with a token, sent on every call, so the
fuzzing reaches the routes behind it."""

from __future__ import annotations

import warnings
from collections import Counter

import pytest

import imgfeat
from conftest import FAST_MODELS, blob_image

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation.modes import GenerationMode

TOKEN = "fuzz-token-0123456789"
EXAMPLES = 25  # per operation and mode: about 15 s for the whole schema on 2 shared cores


@pytest.fixture(scope="module")
def fuzz_schema(tmp_path_factory):
    from imgfeat.retrieval.dedup import find_duplicates
    from imgfeat.retrieval.index import FeatureIndex
    from imgfeat.serve import ServeConfig, create_app

    root = tmp_path_factory.mktemp("serve-fuzz")
    photos = root / "photos"
    photos.mkdir()
    for i in range(4):
        blob_image(photos / f"blob{i}.png", offset=i * 20)
    imgfeat.extract(photos, root / "features", **FAST_MODELS)
    FeatureIndex.build(root / "features").save(root / "index")
    find_duplicates(root / "features", 0.5).to_parquet(root / "groups.parquet")
    # schemathesis calls the app with Host: testserver
    app = create_app(root / "index", groups_path=root / "groups.parquet",
                     config=ServeConfig(token=TOKEN, allowed_hosts=("testserver",), max_upload_bytes=256 * 1024))

    async def one_lifespan(scope, receive, send):
        # schemathesis runs each call in its own TestClient, i.e. its own lifespan, whose end
        # would stop the batch worker: answer lifespan events here and stop it once, at the end
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await app(scope, receive, send)

    yield schemathesis.openapi.from_asgi("/openapi.json", one_lifespan, headers={"Authorization": f"Bearer {TOKEN}"})
    app.state.service.close()


OPERATIONS = [("POST", "/embed"), ("POST", "/search"), ("GET", "/items/{item_id}"), ("GET", "/thumb/{item_id}"),
              ("GET", "/groups"), ("POST", "/reviews"), ("GET", "/healthz")]

# operations whose every input is valid per the schema (any string may be an id: unknown ones get 404)
NO_INVALID_INPUT = {"/healthz": "no input", "/items/{item_id}": "any string is a valid id",
                    "/thumb/{item_id}": "any string is a valid id"}


def test_every_operation_is_fuzzed(fuzz_schema):
    found = {(result.ok().method.upper(), result.ok().path) for result in fuzz_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# (schemathesis' own pytest loader does not run under pytest 9: drive its strategies with hypothesis)
CASES = [(method, path, mode) for method, path in OPERATIONS
         for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
         if not (mode == GenerationMode.NEGATIVE and path in NO_INVALID_INPUT)]


@pytest.mark.parametrize("method, path, mode", CASES, ids=[f"{m}-{p}-{mode}" for m, p, mode in CASES])
def test_never_a_5xx_and_errors_are_json(fuzz_schema, method, path, mode):
    calls = []

    @given(case=fuzz_schema[path][method].as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
        calls.append(response.status_code)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert response.headers["content-type"][0].startswith("application/json"), response.headers
            body = response.json()
            assert set(body) == {"error", "detail"} and body["error"] and body["detail"], body
        assert "content-security-policy" in response.headers

    check()
    assert calls, "hypothesis generated nothing"
    print(f"\nfuzz {method} {path} {mode}: {len(calls)} calls, statuses {dict(Counter(calls))}")
