"""A Redis outage (issue 11): the system on a private redis-server that the test kills and restarts.

What each service does while Redis is down (ARCHITECTURE.md, "Redis: what each key is for"):
- console and indexer verify tokens against the deny list in Redis: they fail closed, 503 (a logged-out
  token must not pass because the list cannot be read);
- auth's login, registration and reset throttles live in Redis: those endpoints answer 503 rather than run
  unthrottled (no brute-force window) — and nothing is counted meanwhile, so nobody is locked out after;
- every answer is the services' JSON 503, quickly; `/readyz` says which dependency failed;
- when Redis is back every service recovers by itself (the clients reconnect), no restart.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.client import DOCUMENTS, User, login, new_credentials, register
from tests.e2e.infra import Infra
from tests.e2e.infra.redis_server import PrivateRedis
from tests.e2e.system import System, start_system
from testsupport.broker import poll_until

pytestmark = [pytest.mark.slow, pytest.mark.chaos, pytest.mark.e2e]


@pytest.fixture(scope="module")
def redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_system(
    infra: Infra, redis: PrivateRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[System]:
    private = dataclasses.replace(infra, redis_url=redis.url)
    with start_system(
        private,
        bootstrap=infra.kafka_bootstrap,
        log_dir=tmp_path_factory.mktemp("redis-out"),
        label="redisout",
    ) as s:
        yield s


async def test_services_fail_closed_with_503_while_redis_is_down_and_recover_alone(
    redis_system: System, redis: PrivateRedis
) -> None:
    system = redis_system
    who = new_credentials("redisout")
    await register(system, who)
    user = User(system, await login(system, who))
    ds = await user.create_dataset()
    pids = {name: p.proc.pid for name, p in system.processes.items() if p.proc is not None}
    auth = httpx.AsyncClient(base_url=system.url("auth"), timeout=30)
    credentials = {"email": who.email, "password": who.password}
    try:
        redis.stop()
        calls = {
            "console read": lambda: user.console.get(f"/console/api/datasets/{ds}"),
            "console write": lambda: user.console.post(
                DOCUMENTS.format(ds=ds), json={"name": "n", "text": "t"}
            ),
            "indexer search": lambda: user.indexer.get(
                "/indexer/api/search", params={"dataset_id": ds, "q": "t"}
            ),
            "auth login": lambda: auth.post("/auth/api/login", json=credentials),
            "auth register": lambda: auth.post(
                "/auth/api/register",
                json={"email": "x-redisout@example.com", "password": "correct horse 42", "name": "X"},
            ),
            "auth readyz": lambda: auth.get("/readyz"),
        }
        answers = {}
        slowest = 0.0
        for what, call in calls.items():
            started = time.monotonic()
            r = await call()
            slowest = max(slowest, time.monotonic() - started)
            answers[what] = (r.status_code, r.json()["error"]["code"])
        print(f"\nwhile Redis is down: {answers}; slowest answer {slowest:.2f}s")
        assert answers == {
            "console read": (503, "unavailable"),
            "console write": (503, "unavailable"),
            "indexer search": (503, "unavailable"),
            "auth login": (503, "unavailable"),
            "auth register": (503, "unavailable"),
            "auth readyz": (503, "not_ready"),
        }
        assert slowest < 10

        redis.start()  # same port, empty: the deny list and counters start afresh
        started = time.monotonic()
        poll_until(
            lambda: httpx.post(f"{system.url('auth')}/auth/api/login", json=credentials).status_code == 200,
            timeout=30,
            what="login again",
        )
        again = await user.console.get(f"/console/api/datasets/{ds}")
        assert again.status_code == 200, again.text
        print(f"recovered {time.monotonic() - started:.2f}s after Redis came back, no restart")
        assert {name: p.proc.pid for name, p in system.processes.items() if p.proc is not None} == pids
        assert not system.dead()
    finally:
        await auth.aclose()
        await user.aclose()
