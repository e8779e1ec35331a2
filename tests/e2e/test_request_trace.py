"""From a request to its trace on the running system (tests/e2e/system.py, every process real): the trace
id a response names finds, with `outbox trace`, the whole trace of the request: console's HTTP span, its
relay's send, the indexer consumer's processing, the indexer relay's send of the report and console's
consumer. The request id finds the same trace, and the API's access log line carries both ids."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.e2e.client import User
from tests.e2e.system import System
from testsupport import wait_until

pytestmark = pytest.mark.e2e

HOPS = ("[console]", "[console-relay] send", "[indexer-consumer] process", "[indexer-relay] send",
        "[console-consumer] process")  # fmt: skip


@pytest.fixture
async def user(system: System) -> AsyncIterator[User]:
    u = await User.signed_up(system, "reqtrace")
    yield u
    await u.aclose()


def outbox_trace(system: System, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "outbox.ops.cli", "trace", str(system.spans_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_responses_trace_id_finds_its_whole_trace(system: System, user: User) -> None:
    ds = await user.create_dataset()
    doc = (await user.create_document(ds, "Ribosomes build proteins.", enabled=False))["id"]
    await user.settled(ds, doc, 1)
    request_id = f"e2e-{uuid.uuid4().hex}"
    r = await user.action(ds, "enable", doc, headers={"X-Request-ID": request_id})
    assert r.status_code == 200, r.text
    trace_id = r.headers["x-trace-id"]
    assert re.fullmatch(rf"00-{trace_id}-[0-9a-f]{{16}}-[0-9a-f]{{2}}", r.headers["traceresponse"]), r.headers
    await user.settled(ds, doc, 2)

    async def whole_trace() -> str | None:
        done = outbox_trace(system, "--trace-id", trace_id)
        return done.stdout if done.returncode == 0 and all(hop in done.stdout for hop in HOPS) else None

    shown = await wait_until(whole_trace, timeout=20, what=f"every hop of trace {trace_id} in the spans file")
    print(shown)
    assert shown.startswith(f"trace {trace_id}") and f"request {request_id}" in shown.splitlines()[0]

    by_request = outbox_trace(system, "--request-id", request_id, "--last", "10")
    assert by_request.returncode == 0, by_request.stderr
    assert [line.split()[1] for line in by_request.stdout.splitlines() if line.startswith("trace ")] == [
        trace_id
    ]
    # The same trace by what it did and when, among every other trace of the session's system.
    recent = outbox_trace(system, "--since", "10m", "--service", "console-consumer", "--name", "status/")
    assert f"trace {trace_id}" in recent.stdout, recent.stdout + recent.stderr

    # console's access log: one line for the request, with both ids (plain text here: LOG_FORMAT unset).
    log = system.processes["console"].log_path.read_text()
    lines = [line for line in log.splitlines() if f"request_id={request_id} " in line]
    assert len(lines) == 1, lines
    assert "servicekit.access" in lines[0] and " 200 " in lines[0] and f"trace_id={trace_id}" in lines[0]
    assert "uvicorn.access" not in log


async def test_an_error_names_its_trace_too(system: System, user: User) -> None:
    request_id = f"e2e-{uuid.uuid4().hex}"
    r = await user.console.get(f"/console/api/datasets/{uuid.uuid4()}", headers={"X-Request-ID": request_id})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    trace_id = r.headers["x-trace-id"]

    async def found() -> str | None:
        done = outbox_trace(system, "--request-id", request_id)
        return done.stdout if done.returncode == 0 else None

    shown = await wait_until(found, timeout=10, what=f"the trace of request {request_id}")
    assert shown.startswith(f"trace {trace_id}") and "[console] GET /console/api/datasets/" in shown
