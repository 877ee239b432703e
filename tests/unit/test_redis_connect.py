"""Redis settings (sentinels, managed Redis) and the one factory of clients, against real Redis and a
real redis-sentinel on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr, ValidationError
from redis.sentinel import SentinelConnectionPool

from server.redis_connect import OUTAGE_ERRORS, RedisTarget, parse_sentinels
from server.settings import Settings
from tests.conftest import wait_until
from tests.deploy.redis_process import running_redis


def test_sentinel_lists_parse_with_default_port_and_ipv6() -> None:
    assert parse_sentinels("a:1, b:26380,c") == (("a", 1), ("b", 26380), ("c", 26379))
    assert parse_sentinels("[::1]:5000,[fe80::1]") == (("::1", 5000), ("fe80::1", 26379))
    assert parse_sentinels("") == ()


@pytest.mark.parametrize("bad", ["a:port", "a:0", "a:70000", ":5", "[::1", "[::1]x"])
def test_a_bad_sentinel_entry_is_refused_naming_it(bad: str) -> None:
    with pytest.raises(ValueError, match=r"not host:port|no valid port"):
        parse_sentinels(bad)


def test_settings_read_sentinels_and_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLM_REDIS_SENTINELS", "10.0.0.1:26379,10.0.0.2:26379")
    monkeypatch.setenv("SLM_REDIS_SENTINEL_MASTER", "queue")
    monkeypatch.setenv("SLM_REDIS_SENTINEL_PASSWORD", "s3")
    monkeypatch.setenv("SLM_REDIS_USERNAME", "slm")
    monkeypatch.setenv("SLM_REDIS_PASSWORD", "p4")
    settings = Settings()
    target = settings.redis_target()
    assert settings.redis_configured and settings.redis_url is None
    assert target.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26379))
    assert (target.master, target.username, target.password, target.sentinel_password) == ("queue", "slm", "p4", "s3")
    assert "p4" not in repr(settings) and "s3" not in repr(settings)
    assert target.describe() == "sentinels 10.0.0.1:26379,10.0.0.2:26379 (master 'queue')"


def test_bad_redis_settings_are_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLM_REDIS_SENTINELS", "10.0.0.1:x")
    with pytest.raises(ValidationError, match="redis_sentinels"):
        Settings()
    with pytest.raises(ValidationError, match="redis_url"):
        Settings(redis_url="http://redis:6379", redis_sentinels="")


def test_no_redis_configured_is_no_client() -> None:
    assert not Settings().redis_configured
    with pytest.raises(ValueError, match="SLM_REDIS_SENTINELS"):
        RedisTarget().sync_client()


def test_the_url_never_shows_its_password() -> None:
    assert RedisTarget(url="rediss://u:secret@cache.example:6380/0").describe() == "cache.example:6380/0"


def test_readonly_counts_as_an_outage() -> None:
    assert issubclass(redis.ReadOnlyError, OUTAGE_ERRORS)
    assert issubclass(redis.ConnectionError, OUTAGE_ERRORS) and issubclass(redis.TimeoutError, OUTAGE_ERRORS)


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[int]:
    """A Redis that wants an ACL user and password, as managed Redis does."""
    with running_redis([], tmp_path / "acl") as (port, _):
        admin = redis.Redis(port=port)
        admin.acl_setuser("slm", enabled=True, passwords=["+p4ss"], keys=["*"], commands=["+@all"])
        admin.config_set("requirepass", "adminpw")
        admin.close()
        yield port


def test_acl_user_and_password_settings_reach_a_protected_redis(acl_redis: int) -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{acl_redis}/0", redis_username="slm",
                        redis_password=SecretStr("p4ss"))
    client = settings.redis_target().sync_client(socket_timeout=2)
    assert client.acl_whoami() == "slm"
    client.close()
    wrong = Settings(redis_url=f"redis://127.0.0.1:{acl_redis}/0", redis_username="slm",
                     redis_password=SecretStr("nope")).redis_target().sync_client(socket_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        wrong.ping()
    wrong.close()


async def test_the_async_client_uses_the_same_credentials(acl_redis: int) -> None:
    target = Settings(redis_url=f"redis://127.0.0.1:{acl_redis}/0", redis_username="slm",
                      redis_password=SecretStr("p4ss")).redis_target()
    client = target.async_client(socket_timeout=2)
    try:
        assert await client.acl_whoami() == "slm"
    finally:
        await client.aclose()


@pytest.fixture
def sentinel_port(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """A master and one sentinel (quorum 1) watching it: (master port, sentinel port)."""
    with running_redis([], tmp_path / "master") as (master, _):
        conf = tmp_path / "sentinel.conf"
        conf.write_text(f"sentinel monitor queue 127.0.0.1 {master} 1\n")
        with running_redis([str(conf), "--sentinel"], tmp_path / "sentinel") as (sentinel, _):
            yield master, sentinel


def test_sentinel_settings_reach_the_master_the_sentinels_name(sentinel_port: tuple[int, int]) -> None:
    master, sentinel = sentinel_port
    target = Settings(redis_sentinels=f"127.0.0.1:{sentinel}", redis_sentinel_master="queue").redis_target()
    client = target.sync_client(socket_timeout=2, socket_connect_timeout=2)
    wait_until(lambda: client.ping(), timeout_s=10, what="the master through the sentinel")
    client.set("through-sentinel", "yes")
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.get_master_address() == (  # type: ignore[no-untyped-call]
        "127.0.0.1", master)
    assert redis.Redis(port=master).get("through-sentinel") == b"yes"
    client.close()


async def test_the_async_sentinel_client_reaches_the_master(sentinel_port: tuple[int, int]) -> None:
    master, sentinel = sentinel_port
    target = Settings(redis_sentinels=f"127.0.0.1:{sentinel}", redis_sentinel_master="queue").redis_target()
    client = target.async_client(socket_timeout=2, socket_connect_timeout=2)
    try:
        await client.set("async-through-sentinel", "yes")
    finally:
        await client.aclose()
    assert redis.Redis(port=master).get("async-through-sentinel") == b"yes"


def test_an_unknown_master_name_is_a_connection_error(sentinel_port: tuple[int, int]) -> None:
    _, sentinel = sentinel_port
    target = Settings(redis_sentinels=f"127.0.0.1:{sentinel}", redis_sentinel_master="other").redis_target()
    client = target.sync_client(socket_timeout=1, socket_connect_timeout=1)
    with pytest.raises(OUTAGE_ERRORS):
        client.ping()
    client.close()
