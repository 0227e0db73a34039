"""The HTTP routes: a FastAPI app over a `SearchService`.

    POST /embed          image (multipart field "image", or the raw body) -> box, label, score,
                         embedding, code (hex)
    POST /search?k=10    image -> the query's box and its k nearest indexed images
    GET  /items/{id}     metadata of an indexed image
    GET  /thumb/{id}     JPEG thumbnail of an indexed image (ids from the index only)
    GET  /groups         a page of duplicate groups (from `imgfeat dedup`), with verdicts
    POST /reviews        {"ids": [...], "verdict": "not-duplicate"} -> reviews.jsonl
    GET  /healthz        index size, models, batching figures
    GET  /               the web page (static/index.html); /openapi.json, and /docs when enabled

Every refused request answers {"error": <kind>, "detail": <sentence>} with a 4xx status; a
server-side failure answers the same shape with 5xx (503: the reviews file cannot be written).
`security.Guard` wraps the app: Host check, optional bearer token, body deadline, CSP.

    app = create_app("index/", groups_path="groups.parquet")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import os
import re
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any, AsyncIterator, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from ..errors import ImgfeatError
from .batching import BatcherClosed
from .security import Guard, docs_csp, hosts_for
from .responses import RequestError
from .service import SearchService, ServeConfig

STATIC = Path(__file__).parent / "static"
MAX_ID_LENGTH = 512
IMAGE_FIELD = "image"

_IMAGE_BODY = {
    "required": True,
    "description": "The image: multipart/form-data field `image`, or the raw bytes as the body with "
                   "any content type. The bytes are sniffed; the file name and content type are ignored.",
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": [IMAGE_FIELD],
                                           "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
_ERRORS = {status: {"description": text, "content": {"application/json": {"example": {"error": kind, "detail": "..."}}}}
           for status, text, kind in [
               (400, "empty body or malformed multipart", "empty"),
               (413, "body over the upload cap, or image over the pixel cap", "too-large"),
               (415, "the bytes are not an image", "not-an-image"),
               (422, "a corrupt image or an invalid parameter", "corrupt")]}


class ReviewRequest(BaseModel):
    """A reviewer's verdict on a duplicate group."""

    ids: list[str] = Field(min_length=2, max_length=10_000, description="ids of the group's images")
    verdict: Literal["not-duplicate", "duplicate"] = Field(
        "not-duplicate", description="not-duplicate: the next `imgfeat dedup` keeps them apart; "
                                     "duplicate: recorded only")


def create_app(index_path: Any, groups_path: str | os.PathLike | None = None,
               reviews_path: str | os.PathLike | None = None, *,
               config: ServeConfig | None = None, bind: str = "127.0.0.1") -> FastAPI:
    """Build the app: load the index and the models now, so a bad setup fails before serving.

    Args:
        index_path: an index folder (single or sharded), or a loaded FeatureIndex/ShardedIndex.
        groups_path: groups Parquet from `imgfeat dedup`, for the duplicates view.
        reviews_path: reviews.jsonl for "not duplicate" verdicts (default: beside groups_path).
        config: upload and pixel caps, batching, thumbnails, token, allowed hosts, limits.
        bind: the address the server binds: requests must name it (or localhost, or one of
            `config.allowed_hosts`) in their Host header.

    Returns:
        The FastAPI app; its lifespan stops the batch worker on shutdown.

    Raises:
        ConfigError: see `SearchService`; errors of `FeatureIndex.load` for a bad index path.
    """
    from ..retrieval.sharded import open_index

    index = index_path if hasattr(index_path, "search") else open_index(index_path)
    service = SearchService(index, groups_path, reviews_path, config)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="imgfeat", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Search an imgfeat feature index by image; review near-duplicate groups.")
    app.state.service = service
    _add_error_handlers(app)
    csp = {}
    if service.config.docs:  # Swagger UI comes from a CDN: only when asked for, under a strict CSP
        docs_html = get_swagger_ui_html(openapi_url="/openapi.json", title="imgfeat - API").body.decode()
        csp["/docs"] = docs_csp(docs_html)

        @app.get("/docs", include_in_schema=False)
        async def docs() -> HTMLResponse:
            return HTMLResponse(docs_html)

    app.add_middleware(Guard, allowed_hosts=hosts_for(bind, service.config.allowed_hosts),
                       token=service.config.token, body_timeout_s=service.config.body_timeout_s, csp=csp)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", summary="Liveness, index size, models and batching figures")
    async def healthz() -> dict[str, Any]:
        return service.health()

    @app.post("/embed", summary="Features of an image: box, label, score, embedding, code (hex)",
              openapi_extra={"requestBody": _IMAGE_BODY}, responses=_ERRORS)
    async def embed(request: Request) -> dict[str, Any]:
        decoded = await run_in_threadpool(service.decode, await _read_image(request, service.config))
        return _checked(await service.embed(decoded))

    @app.post("/search", summary="The k indexed images most similar to an image (cosine)",
              openapi_extra={"requestBody": _IMAGE_BODY}, responses=_ERRORS)
    async def search(request: Request, k: int = Query(10, ge=1, description="neighbours; capped by the "
                                                                          "service's max_k")) -> dict[str, Any]:
        decoded = await run_in_threadpool(service.decode, await _read_image(request, service.config))
        return _checked(await service.search(decoded, k))

    @app.get("/items/{item_id}", summary="Metadata of an indexed image",
             responses={404: {"description": "unknown id"}})
    async def item(item_id: str) -> dict[str, Any]:
        _check_id(item_id)
        return await run_in_threadpool(service.item, item_id)

    @app.get("/thumb/{item_id}", summary="JPEG thumbnail of an indexed image", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "unknown id"}})
    async def thumb(item_id: str) -> Response:
        _check_id(item_id)
        jpeg = await run_in_threadpool(service.thumbnail, item_id)
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    @app.get("/groups", summary="A page of near-duplicate groups with their review verdicts")
    async def groups(offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=200)) -> dict[str, Any]:
        return await run_in_threadpool(service.duplicates.page, offset, limit)

    @app.post("/reviews", status_code=201, summary="Mark a group 'not duplicate' (respected by the next "
                                                   "`imgfeat dedup`)")
    async def reviews(review: ReviewRequest) -> dict[str, Any]:
        for item_id in review.ids:
            _check_id(item_id, status=422)
        return await run_in_threadpool(service.duplicates.review, review.ids, review.verdict)

    return app


def _version() -> str:
    from .._version import __version__

    return __version__


def _check_id(item_id: str, status: int = 404) -> None:
    if not item_id or len(item_id) > MAX_ID_LENGTH:
        raise RequestError(status, "unknown-id", f"no item {item_id[:MAX_ID_LENGTH]!r} in the index")


def _checked(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        raise RequestError(422, "failed", result["error"])
    return result


async def _read_image(request: Request, config: ServeConfig) -> bytes:
    """The uploaded image's bytes: the multipart field "image", or else the whole body.

    Raises:
        RequestError: 413 over the upload cap (declared or actual), 400 for an empty body,
            malformed multipart or a missing "image" field.
    """
    cap = config.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise RequestError(400, "bad-content-length", f"Content-Length {declared[:40]!r} is not a number")
        if int(declared) > cap:
            raise RequestError(413, "too-large", f"the body declares {int(declared)} bytes; the limit "
                                                 f"is {cap} (imgfeat serve --max-upload-mb)")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > cap:
                raise RequestError(413, "too-large", f"the body is over the {cap}-byte limit "
                                                     f"(imgfeat serve --max-upload-mb)")
    except ClientDisconnect as exc:
        raise RequestError(400, "disconnected", "the client went away before sending the whole body") from exc
    if not body:
        raise RequestError(400, "empty", f"no image: send it as the multipart field {IMAGE_FIELD!r} "
                                         f"or as the raw request body")
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        return await _multipart_image(request, bytes(body))
    return bytes(body)


async def _multipart_image(request: Request, body: bytes) -> bytes:
    async def replay() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    replayed = Request(request.scope, replay)
    try:
        async with replayed.form(max_files=4, max_fields=16) as form:
            upload = form.get(IMAGE_FIELD)
            if upload is None:
                raise RequestError(400, "missing-field", f"the multipart body has no field {IMAGE_FIELD!r}; "
                                                         f"fields: {sorted(form.keys())[:10]}")
            if isinstance(upload, str):
                raise RequestError(400, "missing-field", f"the field {IMAGE_FIELD!r} must be a file part "
                                                         f"(a filename in its Content-Disposition)")
            content = await upload.read()
    except (MultiPartException, StarletteHTTPException) as exc:
        detail = getattr(exc, "detail", None) or getattr(exc, "message", str(exc))
        raise RequestError(400, "malformed-multipart", str(detail)) from exc
    if not content:
        raise RequestError(400, "empty", f"the multipart field {IMAGE_FIELD!r} is empty")
    return content


def _slug(status: int) -> str:
    try:
        return re.sub(r"[^a-z0-9]+", "-", HTTPStatus(status).phrase.lower()).strip("-")
    except ValueError:
        return "error"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"error": exc.kind, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if exc.status_code != 404 else "no such route: see /docs for the API"
        return JSONResponse({"error": _slug(exc.status_code), "detail": detail},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(ImgfeatError)
    async def server_side_error(_: Request, exc: ImgfeatError) -> JSONResponse:
        # not the request's fault (e.g. a reviews file edited by hand): say what to fix
        return JSONResponse({"error": type(exc).__name__, "detail": str(exc)}, status_code=500)

    @app.exception_handler(BatcherClosed)
    async def shutting_down(_: Request, exc: BatcherClosed) -> JSONResponse:
        return JSONResponse({"error": "shutting-down", "detail": "the service is stopping; retry on the "
                                                                 "next instance"}, status_code=503)

    @app.exception_handler(Exception)
    async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
        # a bug: JSON like every other answer, without the traceback (uvicorn logs it)
        return JSONResponse({"error": "internal-error", "detail": f"unexpected {type(exc).__name__}; "
                                                                  f"the server log has the traceback"},
                            status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                             for e in exc.errors()[:5])
        return JSONResponse({"error": "invalid-request", "detail": problems}, status_code=422)
