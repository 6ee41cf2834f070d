"""The HTTP front: a threading HTTP/1.1 server around ``CloudApp`` and its lifecycle.

Keep-alive is honoured on ``/v1`` and IAM; every ``/v2.1`` answer carries ``Connection: close``
and closes, because the seed says the native API has no persistent connections.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from simulator.app import CloudApp
from simulator.clock import SystemClock
from simulator.config import SimulatorConfig
from simulator.control import SimulatorControl
from simulator.persist import Persister, load
from simulator.wire import DropConnection, Request, Response, new_request_id

REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "bms-simulator"
    #: Idle keep-alive connections close after this many seconds.
    timeout = 120
    #: Set on the subclass built per server.
    app: CloudApp

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=path,
            query_string=query,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
            request_id=new_request_id(),
            client_address=self.client_address[0],
        )
        try:
            response = self.app.handle(request)
        except DropConnection:
            self.close_connection = True
            self._abort()
            return
        except Exception:
            # why: a simulator bug must show as a 500 with a trace, not a silently dead socket
            traceback.print_exc()
            response = Response(
                500,
                {
                    "error_msg": "simulator error",
                    "error_code": "SIM.0500",
                    "request_id": request.request_id,
                },
            )
        close = path.startswith("/v2.1") or self.close_connection
        self._write(response, request.request_id, close)

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _write(self, response: Response, request_id: str, close: bool) -> None:
        payload = b"" if response.body is None else json.dumps(response.body).encode()
        lines = [f"HTTP/1.1 {response.status} {REASONS.get(response.status, 'Unknown')}"]
        headers = {
            "Content-Type": "application/json;charset=UTF-8",
            "Content-Length": str(len(payload)),
            "X-Request-Id": request_id,
            **response.headers,
        }
        if close:
            headers["Connection"] = "close"
            self.close_connection = True
        lines += [f"{name}: {value}" for name, value in headers.items()]
        # why: one write per answer; headers and body in separate segments meet Nagle's
        # algorithm and delayed ACKs on keep-alive connections (40 ms stalls).
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        """Silent: a benchmark makes tens of thousands of calls."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def server_activate(self) -> None:
        self.open_connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().server_activate()

    def process_request(self, request, client_address) -> None:
        with self.connections_lock:
            self.open_connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self.connections_lock:
            self.open_connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut keep-alive connections too, so a stopped simulator stops answering."""
        with self.connections_lock:
            connections = list(self.open_connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class SimulatorServer:
    """A running simulator: ``start()`` serves in a background thread and returns the base URL.

    ``with SimulatorServer(config) as sim: sim.base_url`` starts and stops it.
    """

    def __init__(self, config: SimulatorConfig | None = None, clock: SystemClock | None = None):
        self.config = config or SimulatorConfig()
        self.app = CloudApp(self.config, clock)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._persister: Persister | None = None
        #: Whether ``start()`` found and loaded ``config.state_file``.
        self.loaded_state = False

    @property
    def clock(self) -> SystemClock:
        return self.app.clock

    @property
    def project_id(self) -> str:
        return self.config.project_id

    @property
    def ak(self) -> str:
        return self.config.credentials[0][0]

    @property
    def sk(self) -> str:
        return self.config.credentials[0][1]

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the simulator is not running")
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def control(self) -> SimulatorControl:
        """The ``/_sim/`` helpers, over HTTP."""
        return SimulatorControl(self.base_url)

    def start(self) -> str:
        """Serve in a background thread; with ``config.state_file``, load it first.

        :raises simulator.persist.StateFileError: the state file cannot be read.
        """
        if self.config.state_file:
            path = Path(self.config.state_file)
            self.loaded_state = load(self.app.state, path)
            self._persister = Persister(self.app.state, path)
            self._persister.save()
            self._persister.start()
        handler = type("Handler", (_Handler,), {"app": self.app})
        self._httpd = _HTTPServer((self.config.host, self.config.port), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="bms-simulator",
            daemon=True,
        )
        self._thread.start()
        return self.base_url

    def serve_forever(self) -> None:
        """Serve in the calling thread until ``stop()`` (from a signal handler or thread)."""
        if self._httpd is None:
            self.start()
        self._thread.join()

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd.close_connections()
            self._thread.join(timeout=5)
            self._httpd = None
        if self._persister is not None:
            self._persister.stop(wait_for_jobs=self.config.job_seconds[1] + 1.0)
            self._persister = None

    def __enter__(self) -> SimulatorServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
