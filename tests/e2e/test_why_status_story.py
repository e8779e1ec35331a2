"""The operator's story (issue 24) on real processes: the indexer's consumer stops, documents change, `outbox why
<document-id>` names the group and how far behind it is, `outbox status --max-lag 1` exits 1; the consumer
comes back and `why` shows the document applied."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.e2e.client import User
from tests.e2e.infra import Infra
from tests.e2e.system import System, start_system
from testsupport import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def story_system(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    with start_system(
        infra, bootstrap=infra.kafka_bootstrap, log_dir=tmp_path_factory.mktemp("why"), label="why"
    ) as s:
        yield s


@pytest.fixture
async def user(story_system: System) -> AsyncIterator[User]:
    u = await User.signed_up(story_system, "why")
    yield u
    await u.aclose()


async def outbox(system: System, *args: str) -> tuple[int, str, str]:
    env = {**os.environ, "OUTBOX_TOPIC_PREFIX": system.topic_prefix, "KAFKA_BOOTSTRAP": system.bootstrap}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "outbox", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    return done.returncode, done.stdout, done.stderr


async def why(system: System, doc: str) -> dict[str, Any]:
    code, out, err = await outbox(
        system,
        "why",
        doc,
        "--database-url",
        system.database_urls["console"],
        "--consumer-db",
        system.database_urls["indexer"],
        "--json",
    )
    assert code == 0, err
    return dict(json.loads(out))


async def test_why_names_the_stopped_group_and_status_max_lag_fails_until_it_is_back(
    story_system: System, user: User
) -> None:
    s = story_system
    group = s.groups["indexer-consumer"]
    ds = await user.create_dataset()
    doc = (await user.create_document(ds, "why story"))["id"]
    await user.settled(ds, doc, 1, timeout=60)

    s.kill("indexer-consumer")
    for action in ("archive", "un_archive"):
        assert (await user.action(ds, action, doc)).status_code == 200

    async def published_and_behind() -> dict[str, Any] | None:
        report = await why(s, doc)
        [state] = [x for x in report["consumers"][0]["states"] if x["group"] == group]
        done = all(r["state"] == "published" for r in report["rows"])
        return report if done and (state["behind"] or 0) >= 2 else None

    report = await wait_until(published_and_behind, timeout=90, interval=0.5, what="changes published")
    assert report["kind"] == "aggregate" and report["matched"].startswith("aggregate id")
    [state] = [x for x in report["consumers"][0]["states"] if x["group"] == group]
    assert report["next"].startswith(f"consumer group {group} is {state['behind']} version(s) behind")
    assert f"outbox status --group {group}" in report["next"]

    code, human, err = await outbox(
        s,
        "why",
        doc,
        "--database-url",
        s.database_urls["console"],
        "--consumer-db",
        s.database_urls["indexer"],
    )
    print(human)  # the operator's view (pytest -s)
    assert code == 0 and human.startswith(f"{doc}: aggregate id (no event has this id)"), err
    assert (
        f"  group {group} console.document: applied v{state['applied_version']}, {state['behind']} behind"
        in human
    )
    assert f"next: consumer group {group} is {state['behind']} version(s) behind" in human

    status_args = ("status", "--database-url", s.database_urls["indexer"], "--group", group)
    code, out, err = await outbox(s, *status_args, "--json")
    assert json.loads(out)["consumer_groups"][group]["lag"] >= 2, err
    code, out, err = await outbox(s, *status_args, "--max-lag", "1")
    print(out, err)
    assert code == 1 and f"outbox status: group {group}: lag " in err, out + err

    s.start("indexer-consumer")

    async def applied() -> dict[str, Any] | None:
        report = await why(s, doc)
        [state] = [x for x in report["consumers"][0]["states"] if x["group"] == group]
        return report if state["behind"] == 0 else None

    report = await wait_until(applied, timeout=120, interval=0.5, what="the indexer caught up")
    assert report["next"].startswith("nothing waits")
    print(
        (
            await outbox(
                s,
                "why",
                doc,
                "--database-url",
                s.database_urls["console"],
                "--consumer-db",
                s.database_urls["indexer"],
            )
        )[1]
    )

    async def healthy() -> bool:  # the group commits its offsets after applying: lag falls to 0 soon after
        return (await outbox(s, *status_args, "--max-lag", "1"))[0] == 0

    await wait_until(healthy, timeout=60, interval=1, what="outbox status --max-lag 1 exits 0")
