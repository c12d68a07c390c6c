"""Fault injectors that sit on the network between the worker and its dependencies.

``TcpProxy`` forwards a port (PostgreSQL) and can cut every connection and refuse new ones for
an outage. ``S3FaultProxy`` is an HTTP reverse proxy in front of moto's server: it forwards every
request unchanged and, while told to, answers a share of the S3 object requests with 503
SlowDown or holds them for a while (a worker "mid-file"), or every S3 request with 503 (an S3
outage, which the worker's HeadBucket probe sees too).
"""

from __future__ import annotations

import contextlib
import http.client
import random
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


class TcpProxy:
    """127.0.0.1:<port> -> target; ``cut()`` drops every connection until ``restore()``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._down = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.refused = 0
        threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True).start()

    def cut(self) -> None:
        """Close every open connection; new ones are accepted and closed at once."""
        self._down.set()
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        _close(self._listener)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down.is_set():
                self.refused += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>FAULTPROXY</RequestId></Error>"
)
_UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable</Code>'
    b"<Message>Service is unable to handle request.</Message><RequestId>FAULTPROXY</RequestId></Error>"
)
_TRICKLE_CHUNKS = 15
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection", "upgrade"}


def is_s3_request(path: str) -> bool:
    """An S3 request on a bucket or an object (path-style); SQS and SNS post to ``/``."""
    return bool(urlsplit(path).path.lstrip("/").partition("/")[0])


def is_object_request(path: str) -> bool:
    """An S3 request on an object: path-style ``/bucket/key`` (SQS and SNS post to ``/``)."""
    bucket, _, key = urlsplit(path).path.lstrip("/").partition("/")
    return bool(bucket) and bool(key)


class S3FaultProxy:
    """An HTTP reverse proxy to ``target`` (moto's endpoint) with switchable faults."""

    def __init__(self, target: str, *, seed: int = 7) -> None:
        parts = urlsplit(target)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.slow_down_share = 0.0  # share of object requests answered 503 SlowDown
        self.s3_down = False  # every S3 request (bucket or object) answered 503: an S3 outage
        self.hold: Callable[[str, str], float] | None = None  # (method, path) -> seconds to hold
        # (method, path) -> seconds over which to send the response body: a slow transfer whose
        # every read still answers well within botocore's 60 s read timeout.
        self.trickle: Callable[[str, str], float] | None = None
        self.slowed_down = 0
        self.object_requests = 0
        self.held = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as botocore's pool expects

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                try:
                    proxy._serve(self)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client went away (killed, timed out)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any  # noqa: N815 - http.server's names

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, name="s3-proxy", daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        trickle_s = 0.0
        if self.s3_down and is_s3_request(request.path):
            self._reply(request, 503, [("Content-Type", "application/xml")], _UNAVAILABLE)
            return
        if is_object_request(request.path):
            hold_s = self.hold(request.command, request.path) if self.hold else 0.0
            trickle_s = self.trickle(request.command, request.path) if self.trickle else 0.0
            with self._lock:
                self.object_requests += 1
                refuse = self._random.random() < self.slow_down_share
                self.slowed_down += refuse
                self.held += hold_s > 0 or trickle_s > 0
            if hold_s > 0:
                time.sleep(hold_s)
            if refuse:
                self._reply(request, 503, [("Content-Type", "application/xml")], _SLOW_DOWN)
                return
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        upstream = http.client.HTTPConnection(*self._upstream, timeout=120)
        try:
            upstream.request(request.command, request.path, body=body or None, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            self._reply(request, response.status, kept, payload, trickle_s)
        finally:
            upstream.close()

    @staticmethod
    def _reply(
        request: BaseHTTPRequestHandler,
        status: int,
        headers: list[tuple[str, str]],
        payload: bytes,
        trickle_s: float = 0.0,
    ) -> None:
        request.send_response_only(status)
        head = request.command == "HEAD"
        for name, value in headers:
            if name.lower() == "content-length" and not head:
                continue  # set below from what is sent
            request.send_header(name, value)
        if not head:
            request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        if head:
            return
        if trickle_s <= 0:
            request.wfile.write(payload)
            return
        chunks = _TRICKLE_CHUNKS
        step = -(-len(payload) // chunks) or 1
        for start in range(0, len(payload), step):
            request.wfile.write(payload[start : start + step])
            request.wfile.flush()
            time.sleep(trickle_s / chunks)
