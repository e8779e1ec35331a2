"""The consistency benchmark, small: the seed's dual write loses, duplicates or leaks changes under the
same crashes the outbox survives with zeros (bench/consistency/run.py; `make consistency` is the full run).

The bench runs as its own process against this session's PostgreSQL (either back end); it starts its own
broker behind a TCP proxy, since it cuts the link."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.e2e.infra import Infra

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_outbox_survives_the_crashes_that_break_the_dual_write(infra: Infra, tmp_path: Path) -> None:
    out = tmp_path / "consistency.json"
    env = {**os.environ, **infra.env(), "PYTHONPATH": str(ROOT), "CONSISTENCY_KEEP_LOGS": str(tmp_path)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.consistency.run", "--small", "--out", str(out),
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), 280)
    print(output.decode())
    assert proc.returncode == 0, output.decode()[-3000:]
    report = json.loads(out.read_text())
    baseline, outbox = report["results"]["baseline"], report["results"]["outbox"]

    for r in (baseline, outbox):
        assert r["quiesced"], r["notes"]
        assert r["committed"] > 0 and r["writer_kills"] > 0 and r["consumer_kills"] > 0 and r["outage_s"] > 0
    assert outbox["committed"] == baseline["committed"]  # same plan, same rollbacks

    assert (outbox["lost"], outbox["duplicated"], outbox["phantom"]) == (0, 0, 0), outbox
    assert outbox["delivered"] == outbox["committed"]
    assert outbox["divergent_documents"] == 0

    assert baseline["lost"] + baseline["duplicated"] + baseline["phantom"] > 0, baseline
