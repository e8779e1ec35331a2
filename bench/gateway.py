"""Gateway overhead: the enable-document call straight to console and through the gateway, alternating.

Needs `make run` up. `python bench/gateway.py [N]` (default 300 calls each way) prints p50/p95 per path and
writes bench/results/gateway.json. Each call toggles one document (enable, then disable), so every call is
a real write: row lock, version bump, outbox insert, commit.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import httpx

GATEWAY = f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '8000')}"
CONSOLE = f"http://127.0.0.1:{os.environ.get('CONSOLE_PORT', '8002')}"
RESULTS = Path(__file__).resolve().parent / "results" / "gateway.json"


def main(calls: int) -> None:
    email, password = f"bench-{uuid.uuid4().hex[:8]}@example.com", "correct horse 42 bench"
    with httpx.Client(base_url=GATEWAY, timeout=30) as http:
        http.post("/auth/api/register", json={"email": email, "password": password, "name": "Bench"})
        token = http.post("/auth/api/login", json={"email": email, "password": password}).json()[
            "access_token"
        ]
    headers = {"authorization": f"Bearer {token}"}
    clients = {
        name: httpx.Client(base_url=url, headers=headers, timeout=30)
        for name, url in (("direct", CONSOLE), ("gateway", GATEWAY))
    }
    ds = clients["direct"].post("/console/api/datasets", json={"name": "bench"}).json()["id"]
    doc = (
        clients["direct"]
        .post(
            f"/console/api/datasets/{ds}/documents",
            json={"name": "bench", "text": "gateway overhead", "enabled": False},
        )
        .json()["id"]
    )
    timings: dict[str, list[float]] = {"direct": [], "gateway": []}
    for i in range(calls * 2):
        name = ("direct", "gateway")[(i // 2) % 2]  # pairs alternate paths
        action = ("enable", "disable")[i % 2]  # every call changes the document
        started = time.perf_counter()
        r = clients[name].patch(
            f"/console/api/datasets/{ds}/documents/status/{action}/batch", params={"document_id": doc}
        )
        timings[name].append((time.perf_counter() - started) * 1000)
        assert r.status_code == 200, r.text
    summary = {}
    for name, ms in timings.items():
        q = statistics.quantiles(ms, n=100, method="inclusive")
        summary[name] = {"p50_ms": round(q[49], 2), "p95_ms": round(q[94], 2), "calls": len(ms)}
    summary["overhead_p50_ms"] = round(summary["gateway"]["p50_ms"] - summary["direct"]["p50_ms"], 2)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
