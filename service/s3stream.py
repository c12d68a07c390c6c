"""Transfers that overlap the processing: a download read while it lands, an upload sent while
its file is written.

A zip's members can be stamped in order as their bytes arrive, and the stamped archive sent in
parts as it grows, so that one large zip costs about the longer of its download and its upload
instead of their sum plus the processing:

- ``ArrivingDownload`` fetches the object's ranges on a pool of threads: the first part, then
  the last (where the central directory is), then the rest in order. ``wait(start, end)`` blocks
  until those bytes are on disk (``processors.gated.GatedFile`` reads through it). The SHA-256 of
  the whole object is taken in order on its own thread as the ranges land.
- ``StreamingUpload`` is a multipart upload fed by ``advance(committed)``: every whole part
  before ``committed`` (bytes the writer will not touch again) is sent at once, each part read by
  its thread; ``finish(size)`` sends the rest and completes it write-once. The output's SHA-256 is
  taken in order as it is committed.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from service.fingerprint import Fingerprint

_CHUNK = 1024 * 1024


class ArrivingDownload:
    """One object landing in ``fd`` in ranges of ``part_size``; bytes before ``first_length``
    are already there."""

    def __init__(
        self,
        fd: int,
        size: int,
        part_size: int,
        first_length: int,
        fetch: Callable[[int, int], None],
        threads: int,
    ) -> None:
        self.size = size
        self._fd = fd
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._cancelled = False
        self._closed = False
        starts = list(range(first_length, size, part_size))
        self._ranges = {start: min(start + part_size, size) for start in starts}
        self._pending = set(starts)
        self._contiguous = size if not starts else first_length  # bytes before it have all landed
        order = starts[-1:] + starts[:-1]  # the central directory first, then in order
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="s3-get")
        self._futures: list[Future[None]] = [self._pool.submit(self._land, fetch, s) for s in order]
        self._digest = hashlib.sha256()
        self._hash_error: BaseException | None = None
        self._hasher = threading.Thread(target=self._hash_in_order, name="s3-hash", daemon=True)
        self._hasher.start()

    def _land(self, fetch: Callable[[int, int], None], start: int) -> None:
        if self._cancelled or self._error is not None:
            return
        try:
            fetch(start, self._ranges[start])
        except BaseException as exc:
            with self._cond:
                self._error = self._error or exc
                self._cond.notify_all()
            raise
        with self._cond:
            self._pending.discard(start)
            while self._contiguous < self.size and self._contiguous not in self._pending:
                self._contiguous = self._ranges.get(self._contiguous, self.size)
            self._cond.notify_all()

    def _landed(self, start: int, end: int) -> bool:
        if end <= self._contiguous:
            return True
        return not any(s < end and self._ranges[s] > start for s in self._pending)

    def wait(self, start: int, end: int) -> None:
        """Return once bytes ``start``..``end`` have landed; raise the download's error if it
        failed (a ``PermanentError`` or ``RetryableError``, as ``ObjectStore.download`` would)."""
        end = min(end, self.size)
        with self._cond:
            while not self._landed(start, end):
                if self._error is not None:
                    raise self._error
                self._cond.wait()

    def _hash_in_order(self) -> None:
        try:
            self._hash_all()
        except BaseException as exc:  # noqa: BLE001 - raised again by ``fingerprint``
            self._hash_error = exc

    def _hash_all(self) -> None:
        position = 0
        while position < self.size:
            end = min(position + _CHUNK, self.size)
            self.wait(position, end)
            chunk = os.pread(self._fd, end - position, position)
            if len(chunk) != end - position:
                raise OSError("the downloaded file is shorter than the bytes that landed")
            self._digest.update(chunk)
            position = end

    def fingerprint(self) -> Fingerprint:
        """Wait for the whole object; its size and SHA-256. Raises the download's error (or the
        hashing's: a fingerprint is never of fewer bytes than the object's)."""
        self.wait(0, self.size)
        self._hasher.join()
        if self._hash_error is not None:
            raise self._hash_error
        return Fingerprint(self.size, self._digest.hexdigest())

    def close(self) -> None:
        """Stop fetching, wait for the ranges in flight (nothing writes to the file after) and
        close the file (its blocks are freed when the job's directory is removed). Idempotent."""
        if self._closed:
            return
        self._cancelled = True
        for future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True)
        with self._cond:
            if self._pending and self._error is None:
                self._error = RuntimeError("download closed before it ended")
            self._cond.notify_all()
        self._hasher.join()
        os.close(self._fd)
        self._closed = True


class StreamingUpload:
    """A multipart upload of a file being written, part by part as it is committed.

    ``send_part(number, fd, offset, length)`` uploads one part (reading it itself) and returns the
    part entry for the completion; ``complete(parts)`` completes the upload and returns S3's
    checksum; ``abort()`` aborts it. Part numbers follow the file: part n holds bytes
    ``(n - 1) * part_size`` onwards.
    """

    def __init__(
        self,
        fd: int,
        part_size: int,
        threads: int,
        send_part: Callable[[int, int, int, int], dict[str, Any]],
        complete: Callable[[list[dict[str, Any]]], str | None],
        abort: Callable[[], None],
    ) -> None:
        self._fd = fd
        self._part_size = part_size
        self._send_part = send_part
        self._complete = complete
        self._abort = abort
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="s3-part")
        self._futures: dict[int, Future[dict[str, Any]]] = {}
        self._next_part = 1
        self._digest = hashlib.sha256()
        self._hashed = 0
        self._closed = False
        self.output: Fingerprint | None = None  # the file's, once ``finish`` has hashed it all

    def advance(self, committed: int) -> None:
        """Bytes before ``committed`` are final: send every whole part among them. Raises the
        first part's failure as soon as it is known."""
        self._hash_to(committed)
        while self._next_part * self._part_size <= committed:
            self._submit(self._next_part, self._part_size)
        self._raise_failed()

    def finish(self, size: int) -> tuple[Fingerprint, str | None]:
        """The file is written (``size`` bytes): send the rest, complete write-once. Returns the
        file's fingerprint (also kept as ``output``) and S3's checksum. Raises what a part or the
        completion raised (a ``ClientError`` PreconditionFailed when the key already holds an
        object); ``abort`` then."""
        self._hash_to(size)
        while self._next_part * self._part_size < size:  # whole parts, the last one kept for below
            self._submit(self._next_part, self._part_size)
        start = (self._next_part - 1) * self._part_size
        if start < size or self._next_part == 1:
            self._submit(self._next_part, size - start)
        self.output = Fingerprint(size, self._digest.hexdigest())
        parts = [self._futures[number].result() for number in sorted(self._futures)]
        checksum = self._complete(parts)
        self._closed = True
        self._release()
        return self.output, checksum

    def abort(self) -> None:
        """Stop sending and abort the upload (nothing is completed); idempotent."""
        if self._closed:
            return
        self._closed = True
        for future in self._futures.values():
            future.cancel()
        self._release()
        self._abort()

    def _release(self) -> None:
        self._pool.shutdown(wait=True)
        os.close(self._fd)

    def _submit(self, number: int, length: int) -> None:
        offset = (number - 1) * self._part_size
        self._futures[number] = self._pool.submit(self._send_part, number, self._fd, offset, length)
        self._next_part = number + 1

    def _raise_failed(self) -> None:
        for future in self._futures.values():
            if future.done() and future.exception() is not None:
                future.result()

    def _hash_to(self, end: int) -> None:
        while self._hashed < end:
            count = min(_CHUNK, end - self._hashed)
            chunk = os.pread(self._fd, count, self._hashed)
            if not chunk:
                raise OSError("the output is shorter than committed")
            self._digest.update(chunk)
            self._hashed += len(chunk)
