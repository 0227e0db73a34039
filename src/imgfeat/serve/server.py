"""uvicorn set up with the service's connection limits: one place for `imgfeat serve` and tests.

    config = uvicorn_config(app, "127.0.0.1", 8000, ServeConfig())
    uvicorn.Server(config).run()

uvicorn bounds idle keep-alive connections (`timeout_keep_alive`) and connections at once
(`limit_concurrency`: more get a 503), but not a client that connects and sends its request
headers slowly, or never: `HeaderDeadlineH11` closes such a connection after
`ServeConfig.header_timeout_s`. Slow bodies are cut by `security.Guard` (408).
"""

from __future__ import annotations

from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from .service import ServeConfig


class HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete in time."""

    header_timeout_s = 10.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_deadline()  # the next request on this connection gets its own deadline

    def _arm_header_deadline(self) -> None:
        cycle = self.cycle

        def expire() -> None:
            # no new request head since arming (a new one makes a new cycle): drop the connection
            if self.cycle is cycle and not self.transport.is_closing():
                self.transport.close()

        self.loop.call_later(self.header_timeout_s, expire)


def uvicorn_config(app: Any, host: str, port: int, config: ServeConfig, **kwargs: Any) -> uvicorn.Config:
    """A uvicorn.Config with `config`'s limits (connections, keep-alive, header deadline).

    Args:
        app: the ASGI app from `create_app`.
        host, port: where to bind (ignored by `Server.run(sockets=...)`).
        config: the service's options.
        **kwargs: more uvicorn.Config options (log_level, access_log, ...).
    """
    protocol = type("ServeH11", (HeaderDeadlineH11,), {"header_timeout_s": config.header_timeout_s})
    return uvicorn.Config(app, host=host, port=port, http=protocol, ws="none", lifespan="on",
                          limit_concurrency=config.max_connections, timeout_keep_alive=config.keep_alive_s,
                          server_header=False, **kwargs)
