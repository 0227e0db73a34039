"""Run the app with uvicorn in a background thread (tests, notebooks, benchmarks).

    with BackgroundServer(create_app("index/")) as server:
        httpx.get(f"{server.url}/healthz")
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from ..errors import ImgfeatError


class BackgroundServer:
    """Serve an ASGI app on 127.0.0.1 (a free port unless given) in a daemon thread.

    Args:
        app: the ASGI app, e.g. from `create_app`.
        host: address to bind; loopback by default.
        port: 0 picks a free port (the socket is bound here, so there is no race).
        start_timeout: seconds to wait for the server to accept connections.
        config: the connection limits (`server.uvicorn_config`); default: the app's own
            `ServeConfig` when it comes from `create_app`.

    Raises:
        ImgfeatError: the server did not start within `start_timeout`.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0,
                 config: Any = None):
        import uvicorn

        from .server import uvicorn_config
        from .service import ServeConfig

        self.host = host
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.port = self._socket.getsockname()[1]
        service = getattr(getattr(app, "state", None), "service", None)
        config = config or getattr(service, "config", None) or ServeConfig()
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port, config, log_level="warning",
                                                    access_log=False))
        self.start_timeout = start_timeout
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._socket]},
                                        name="imgfeat-uvicorn", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "BackgroundServer":
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ImgfeatError(f"the server did not start on {self.url} within {self.start_timeout} s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._socket.close()

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
