"""A TCP proxy that caps every connection at a fixed rate, each direction on its own token bucket.

On AWS one S3 connection moves roughly 85-100 MB/s, so the number of connections a client opens is
what decides its throughput. moto on loopback has no such limit (the two cores are the only wall),
so the benchmark puts this proxy in front of moto: every accepted connection gets two threads (client
to server, server to client), each paced by a token bucket of ``rate`` bytes/s with a small burst.
Connections do not share a budget: ten connections move ten times the bytes of one, as on S3.

Run it in a process of its own, so its threads do not share a GIL with moto or the worker:

    python -m bench.proxy UPSTREAM_URL RATE_BYTES_PER_S     # prints the listening port, then serves

It exits on SIGTERM or when its standard input closes (the parent went away).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from urllib.parse import urlsplit

CHUNK = 64 * 1024
BURST_S = 0.02  # the bucket holds this many seconds of the rate (at least one chunk)


class TokenBucket:
    """Paces one direction of one connection at ``rate`` bytes/s, bursts up to ``burst`` bytes."""

    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst_s = burst / rate
        # The virtual-time form of a bucket: when the bytes granted so far are paid for. A sender may
        # run ahead of it by the burst, no further.
        self._paid_until = 0.0

    def wait(self, nbytes: int) -> float:
        """Block until ``nbytes`` may pass; return the seconds slept."""
        now = time.monotonic()
        self._paid_until = max(self._paid_until, now) + nbytes / self._rate
        delay = self._paid_until - self._burst_s - now
        if delay > 0:
            time.sleep(delay)
            return delay
        return 0.0


def _pipe(src: socket.socket, dst: socket.socket, bucket: TokenBucket) -> None:
    """Copy ``src`` to ``dst`` at the bucket's rate until ``src`` ends; then half-close ``dst``."""
    try:
        while data := src.recv(CHUNK):
            bucket.wait(len(data))
            dst.sendall(data)
    except OSError:
        pass  # the other side reset the connection: close both below
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _serve_connection(client: socket.socket, upstream: tuple[str, int], rate: float) -> None:
    burst = max(float(CHUNK), rate * BURST_S)
    try:
        server = socket.create_connection(upstream)
    except OSError:
        client.close()
        return
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    back = threading.Thread(target=_pipe, args=(server, client, TokenBucket(rate, burst)), daemon=True)
    back.start()
    _pipe(client, server, TokenBucket(rate, burst))
    back.join()
    client.close()
    server.close()


class RateCappedProxy:
    """Listens on a loopback port and relays every connection to ``upstream`` at ``rate`` bytes/s."""

    def __init__(self, upstream_url: str, rate: float) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", int(parts.port or 80))
        self._rate = rate
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = int(self._listener.getsockname()[1])
        self._stopped = threading.Event()

    def serve(self) -> None:
        """Accept connections until ``stop``; each one is served on its own threads."""
        self._listener.settimeout(0.5)
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            threading.Thread(
                target=_serve_connection, args=(client, self._upstream, self._rate), daemon=True
            ).start()
        self._listener.close()

    def stop(self) -> None:
        """Stop accepting; connections in flight end with the process (their threads are daemons)."""
        self._stopped.set()


def main(argv: Sequence[str]) -> int:
    """``UPSTREAM_URL RATE``: print the port, serve until SIGTERM or until stdin closes."""
    proxy = RateCappedProxy(argv[0], float(argv[1]))

    def stop(_signum: int, _frame: FrameType | None) -> None:
        proxy.stop()

    signal.signal(signal.SIGTERM, stop)

    def watch_stdin() -> None:
        sys.stdin.read()  # returns when the parent closes the pipe or exits
        proxy.stop()

    threading.Thread(target=watch_stdin, daemon=True).start()
    print(proxy.port, flush=True)
    proxy.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
