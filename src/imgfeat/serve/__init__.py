"""The HTTP service: search by image and duplicate review, over a saved FeatureIndex.

    from imgfeat.serve import create_app
    app = create_app("index/", groups_path="groups.parquet")   # then run it with uvicorn

Needs the serve extra: pip install 'imgfeat[serve]'. Modules: app.py (routes), service.py
(embed/search/thumbnails without HTTP, ServeConfig), groups.py (duplicate groups and reviews),
security.py (Host check, token, body deadline, CSP), server.py (uvicorn with connection
limits), batching.py (micro-batcher), background.py (a server in a thread), static/ (the page).
The security model is in docs/serving.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:
    # FastAPI is an optional extra: import it only when the service is actually wanted
    if name in __all__:
        from ..errors import MissingExtra

        try:
            from . import app, service
        except ImportError as exc:
            raise MissingExtra(exc.name or "fastapi", "serve", "the HTTP service") from exc
        return {"create_app": app.create_app, "ServeConfig": service.ServeConfig}[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
