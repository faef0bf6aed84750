"""A fault-injecting HTTP proxy for S3-API tests: it sits on 127.0.0.1 between the clients (s3fs/botocore, in
this process and in DataLoader workers) and the test server (moto), forwards every request, and fails the ones a
rule matches the way a real object store or network does:

- ``500`` / ``503``: an S3 error response (``InternalError`` / ``SlowDown``) instead of the object;
- ``slow``: the response starts ``delay`` seconds late (past the client's read timeout);
- ``reset``: status, headers and half of the body are sent, then the connection is reset (RST);
- ``drop``: the request is read, then the connection is reset before any response.

Rules match a method and a substring of the path and fire ``times`` times (``None``: every time), so a test can
count exactly which requests failed.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextlib.contextmanager
def aws_env(endpoint: str, **extra: str):
    """The standard AWS variables pointing every client (and the DataLoader workers) at ``endpoint`` with test
    credentials (plus ``extra`` variables), s3fs's instance cache cleared on entry and exit; restored afterwards."""
    import s3fs

    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", **extra}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


_ERRORS = {500: ("InternalError", "We encountered an internal error. Please try again."),
           503: ("SlowDown", "Please reduce your request rate.")}
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


@dataclass
class Rule:
    """Fail requests whose method is ``method`` and whose path contains ``path`` (``times`` of them)."""

    method: str
    path: str
    fault: str  # "500" | "503" | "slow" | "reset" | "drop"
    times: int | None = 1
    delay: float = 0.0
    fired: int = 0

    def take(self, method: str, path: str) -> bool:
        if method != self.method or self.path not in path or (self.times is not None and self.fired >= self.times):
            return False
        self.fired += 1
        return True


@dataclass
class FaultProxy:
    """The proxy; ``url`` is its endpoint (give it as ``AWS_ENDPOINT_URL``)."""

    upstream: tuple[str, int]
    rules: list[Rule] = field(default_factory=list)
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, fault or "ok")

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _reset(self) -> None:
                self.wfile.flush()
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                self.close_connection = True

            def _handle(self) -> None:
                body = self._body()
                fault = proxy._fault(self.command, self.path)
                proxy.log.append((self.command, self.path, fault.fault if fault else "ok"))
                if fault is not None and fault.fault == "drop":
                    return self._reset()
                if fault is not None and fault.fault in ("500", "503"):
                    code = int(fault.fault)
                    name, text = _ERRORS[code]
                    payload = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{name}</Code>'
                               f"<Message>{text}</Message></Error>").encode()
                    self.send_response(code)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return None
                status, headers, data = proxy._forward(self.command, self.path, dict(self.headers), body)
                if fault is not None and fault.fault == "slow":
                    time.sleep(fault.delay)
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                self.end_headers()
                if self.command == "HEAD":
                    return None
                if fault is not None and fault.fault == "reset" and data:
                    self.wfile.write(data[: len(data) // 2])
                    return self._reset()
                self.wfile.write(data)
                return None

            def _guarded(self) -> None:
                try:
                    self._handle()
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a slow response timed out)
                    self.close_connection = True

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _guarded

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def _fault(self, method: str, path: str) -> Rule | None:
        with self._lock:
            return next((r for r in self.rules if r.take(method, path)), None)

    def _forward(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, list, bytes]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in headers.items() if k.lower() not in _HOP}
            if body or method in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(method, path, body=body or None, headers=headers)
            r = conn.getresponse()
            data = r.read()
            return r.status, [(k, v) for k, v in r.getheaders() if k.lower() != "content-length"] + [
                ("Content-Length", str(len(data)) if method != "HEAD" else r.getheader("Content-Length", "0"))], data
        finally:
            conn.close()

    def inject(self, *rules: Rule) -> None:
        """Replace the rules (and forget what fired)."""
        with self._lock:
            self.rules = list(rules)
            self.log.clear()

    def fired(self, fault: str | None = None) -> list[tuple[str, str, str]]:
        """The requests failed so far (of one kind)."""
        return [e for e in self.log if e[2] != "ok" and (fault is None or e[2] == fault)]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
