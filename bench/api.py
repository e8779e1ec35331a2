"""`make bench-api`: what a request costs, per route, against a running system (`make run`), beside a bare
FastAPI + SQLAlchemy app doing the same SELECT as console's `GET /console/api/datasets/{id}`.

For each route: blocks of calls, alternating between routes (so a busy moment hits all of them alike),
each block timed by the client (p50, requests/s one client at a time) and, where the serving process is
found by its port, charged the CPU that process used (µs per request). Then enable -> searchable through
the gateway (PATCH, then search until the document is found) against PATCH + one search.
Results: bench/results/api.json. Ports: GATEWAY_PORT, AUTH_PORT, CONSOLE_PORT, INDEXER_PORT (the
defaults of `make run`); the bare app reads console's database at BENCH_CONSOLE_DATABASE_URL.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.common import machine
from bench.cpu import pid_listening_on, process_cpu_s
from testsupport import free_port

PORTS = {
    "gateway": int(os.environ.get("GATEWAY_PORT", "8000")),
    "auth": int(os.environ.get("AUTH_PORT", "8001")),
    "console": int(os.environ.get("CONSOLE_PORT", "8002")),
    "indexer": int(os.environ.get("INDEXER_PORT", "8003")),
}
CONSOLE_DB = os.environ.get("BENCH_CONSOLE_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/console")
RESULTS = Path(__file__).resolve().parent / "results" / "api.json"
BLOCK = 20
SETTLE_S = 0.2  # between the timed actions of enable -> searchable: see `_enable_to_searchable`
BENCH_EMAIL = os.environ.get("BENCH_EMAIL", "bench-api@example.com")
BENCH_PASSWORD = "correct horse 42 bench"


def _url(service: str) -> str:
    return f"http://127.0.0.1:{PORTS[service]}"


def _quantiles(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=100, method="inclusive")
    return {"p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2)}


class Route:
    def __init__(self, name: str, service: str, call: Callable[[], httpx.Response]) -> None:
        self.name, self.service, self.call = name, service, call
        self.ms: list[float] = []
        self.cpu_s = 0.0
        self.pid = pid_listening_on(PORTS[service]) if service in PORTS else None

    def block(self) -> None:
        before = process_cpu_s(self.pid) if self.pid else 0.0
        for _ in range(BLOCK):
            started = time.perf_counter()
            response = self.call()
            self.ms.append((time.perf_counter() - started) * 1000)
            if response.status_code >= 400:
                raise RuntimeError(f"{self.name}: {response.status_code} {response.text[:200]}")
        if self.pid:
            self.cpu_s += process_cpu_s(self.pid) - before

    def summary(self) -> dict[str, Any]:
        return {
            **_quantiles(self.ms),
            "requests_per_s_one_client": round(1000 / statistics.fmean(self.ms)),
            "server_cpu_us_per_request": round(self.cpu_s * 1e6 / len(self.ms)) if self.pid else None,
            "calls": len(self.ms),
        }


def _token() -> str:
    """An access token for the bench's own account, registered by the first run only: auth allows an address
    10 registrations per 15 minutes, so a new account per run soon had every run fail on the login."""
    with httpx.Client(base_url=_url("auth"), timeout=30) as http:
        login = {"email": BENCH_EMAIL, "password": BENCH_PASSWORD}
        response = http.post("/auth/api/login", json=login)
        if response.status_code == 401:
            registered = http.post("/auth/api/register", json={**login, "name": "Bench"})
            if registered.status_code >= 400:
                raise RuntimeError(
                    f"registering {BENCH_EMAIL}: {registered.status_code} {registered.text[:200]}"
                )
            response = http.post("/auth/api/login", json=login)
        if response.status_code != 200:
            raise RuntimeError(f"logging in as {BENCH_EMAIL}: {response.status_code} {response.text[:200]}")
        token: str = response.json()["access_token"]
        return token


def main(blocks: int) -> None:
    token = _token()
    auth = {"authorization": f"Bearer {token}"}
    clients = {name: httpx.Client(base_url=_url(name), headers=auth, timeout=30) for name in PORTS}
    console = clients["console"]
    ds = console.post("/console/api/datasets", json={"name": f"bench-{uuid.uuid4().hex[:6]}"}).json()["id"]
    doc = console.post(
        f"/console/api/datasets/{ds}/documents",
        json={"name": "bench", "text": "what a request costs", "enabled": False},
    ).json()["id"]
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "bench.bare_app", str(bare_port), CONSOLE_DB])
    try:
        bare_client = httpx.Client(base_url=f"http://127.0.0.1:{bare_port}", timeout=30)
        deadline = time.monotonic() + 30
        while True:
            try:
                if bare_client.get(f"/datasets/{ds}").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the bare app did not answer")
            time.sleep(0.1)
        toggles = iter(("enable", "disable") * blocks * BLOCK)
        created = iter(range(blocks * BLOCK))
        routes = [
            Route("GET /auth/api/me", "auth", lambda: clients["auth"].get("/auth/api/me")),
            Route(
                "GET /console/api/datasets/{id}",
                "console",
                lambda: console.get(f"/console/api/datasets/{ds}"),
            ),
            Route("bare FastAPI GET /datasets/{id}", "bare", lambda: bare_client.get(f"/datasets/{ds}")),
            Route(
                "GET /indexer/api/search",
                "indexer",
                lambda: clients["indexer"].get(
                    "/indexer/api/search", params={"dataset_id": ds, "q": "request"}
                ),
            ),
            Route(
                "POST /console/api/datasets/{id}/documents",
                "console",
                lambda: console.post(
                    f"/console/api/datasets/{ds}/documents",
                    json={"name": f"d{next(created)}", "text": "a created document", "enabled": False},
                ),
            ),
            Route(
                "PATCH .../documents/status/{enable|disable}/batch",
                "console",
                lambda: console.patch(
                    f"/console/api/datasets/{ds}/documents/status/{next(toggles)}/batch",
                    params={"document_id": doc},
                ),
            ),
            Route(
                "GET /console/api/datasets/{id}/documents/{id}",
                "console",
                lambda: console.get(f"/console/api/datasets/{ds}/documents/{doc}"),
            ),
        ]
        routes[2].pid = bare.pid
        for _ in range(blocks):
            for route in routes:
                route.block()
        by_route = {route.name: route.summary() for route in routes}
        searchable = _enable_to_searchable(clients["gateway"], ds, blocks)
    finally:
        bare.terminate()
        bare.wait(10)
    console_get, bare_get = by_route[routes[1].name], by_route[routes[2].name]
    result = {
        "by_route": by_route,
        "authenticated_get_vs_bare": {
            "time_ratio_p50": round(console_get["p50_ms"] / bare_get["p50_ms"], 2),
            "cpu_ratio": round(
                console_get["server_cpu_us_per_request"] / bare_get["server_cpu_us_per_request"], 2
            )
            if console_get["server_cpu_us_per_request"] and bare_get["server_cpu_us_per_request"]
            else None,
        },
        "enable_to_searchable_through_gateway": searchable,
        "machine": machine(),
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _enable_to_searchable(gateway: httpx.Client, ds: str, rounds: int) -> dict[str, Any]:
    """Per round: a new disabled document; PATCH enable, then search until found (every 2 ms). Against it:
    the same PATCH (disable) + one search, i.e. the two round trips the event hop is compared with.

    Each timed action starts from a settled system (`SETTLE_S` after the one before): creating the document,
    or the previous round's disable, sets off an event chain of its own (console's relay, the indexer's
    consumer, its report back to console: ~60 ms here), and a PATCH timed inside it measured that chain's
    queue as much as its own hop (p50 88 ms instead of 55-60 ms on one host)."""
    hop: list[float] = []
    round_trips: list[float] = []
    for i in range(rounds * 2):
        word = f"w{uuid.uuid4().hex[:10]}"
        doc = gateway.post(
            f"/console/api/datasets/{ds}/documents",
            json={"name": f"s{i}-{word}", "text": word, "enabled": False},
        ).json()["id"]
        time.sleep(SETTLE_S)
        started = time.perf_counter()
        gateway.patch(
            f"/console/api/datasets/{ds}/documents/status/enable/batch", params={"document_id": doc}
        )
        while doc not in gateway.get("/indexer/api/search", params={"dataset_id": ds, "q": word}).text:
            time.sleep(0.002)
        hop.append((time.perf_counter() - started) * 1000)
        time.sleep(SETTLE_S)
        started = time.perf_counter()
        gateway.patch(
            f"/console/api/datasets/{ds}/documents/status/disable/batch", params={"document_id": doc}
        )
        gateway.get("/indexer/api/search", params={"dataset_id": ds, "q": word})
        round_trips.append((time.perf_counter() - started) * 1000)
    return {
        "enable_to_searchable": _quantiles(hop),
        "patch_plus_one_search": _quantiles(round_trips),
        "ratio_p50": round(statistics.median(hop) / statistics.median(round_trips), 2),
    }


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
