"""``make bench`` refuses to start, before it creates or measures anything, when the PostgreSQL role
lacks a privilege a phase needs (it used to fail minutes in, at the first CHECKPOINT)."""

import secrets

import psycopg
import pytest

from bench.common import PG_HOST, PG_PORT, PG_USER, BenchError, pg_role_check


def _admin(sql: str) -> None:
    with psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def plain_role():
    name = f"bench_probe_{secrets.token_hex(4)}"
    _admin(f"CREATE ROLE {name} LOGIN NOSUPERUSER NOCREATEDB")
    try:
        yield name
    finally:
        _admin(f"DROP ROLE {name}")


def test_a_role_that_can_neither_create_databases_nor_checkpoint_is_told_both(plain_role):
    with pytest.raises(BenchError) as refused:
        pg_role_check(checkpoint=True, user=plain_role)
    message = str(refused.value)
    assert f"ALTER ROLE {plain_role} CREATEDB" in message
    assert f"GRANT pg_checkpoint TO {plain_role}" in message


def test_the_checkpoint_is_asked_for_only_when_the_rule_scaling_phase_runs(plain_role):
    _admin(f"ALTER ROLE {plain_role} CREATEDB")
    pg_role_check(checkpoint=False, user=plain_role)
    with pytest.raises(BenchError, match="CHECKPOINT") as refused:
        pg_role_check(checkpoint=True, user=plain_role)
    assert "CREATEDB" not in str(refused.value)

    _admin(f"GRANT pg_checkpoint TO {plain_role}")
    pg_role_check(checkpoint=True, user=plain_role)


def test_the_benchmarks_own_role_passes():
    pg_role_check(checkpoint=True)
