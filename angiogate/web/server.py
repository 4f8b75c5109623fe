"""Run the review app with uvicorn in a background thread of `angiogate serve`.

The socket is bound here, before the thread starts, so a port in use is an
error at start (naming `web.port`) and `web.port: 0` gives a free port that
`WebServer.url` reports. uvicorn's access log is off: the gate's own log
lines say who did what, by verdict row id.
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn

log = logging.getLogger(__name__)


class WebServer:
    def __init__(self, app, bind_address: str, port: int):
        self.app, self.bind_address, self.requested_port = app, bind_address, port
        self.socket: socket.socket | None = None
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> "WebServer":
        family = socket.AF_INET6 if ":" in self.bind_address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.bind_address, self.requested_port))
        except OSError as exc:
            sock.close()
            raise OSError(f"web.port {self.requested_port} on {self.bind_address}: {exc.strerror}") from exc
        sock.listen(128)
        sock.set_inheritable(True)
        self.socket = sock
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5, server_header=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, name="web", daemon=True)
        self.thread.start()
        log.info("review app on %s", self.url)
        return self

    @property
    def port(self) -> int:
        return self.socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = self.bind_address
        if host in ("0.0.0.0", "::"):
            host = socket.gethostname()
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def stop(self, timeout: float = 10) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)
        if self.socket is not None:
            self.socket.close()
