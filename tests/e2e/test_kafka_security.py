"""The whole system over SASL_SSL (SCRAM-SHA-512, the password from a file, a CA made here), and what a
relay or consumer with a wrong setting does: refused with one line naming the setting, retrying with
backoff, alive, and losing nothing once the setting is fixed and the process restarted.

The listener is `testsupport.kafka_gate` (TLS + SASL as Kafka's listener does it) in front of a dedicated
Tansu broker: Tansu 0.6.0 enforces neither itself (measured, README.md here). The processes are the
services' real ones (tests/e2e/system.py), configured only through the environment the README's
"Managed Kafka" section gives.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.e2e.client import new_credentials, register
from tests.e2e.infra import Infra
from tests.e2e.system import System, start_system
from testsupport import wait_until
from testsupport.kafka_gate import SecureBroker
from testsupport.tls import TestPki

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

USER, PASSWORD = "outbox-e2e", "a long random secret"
WRONG_PASSWORD = "last year's secret"


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kafka-secrets")
    (directory / "password").write_text(PASSWORD + "\n")
    (directory / "wrong-password").write_text(WRONG_PASSWORD + "\n")
    return directory


@pytest.fixture(scope="module")
def pki(secrets_dir: Path) -> TestPki:
    return TestPki(secrets_dir / "pki")


@pytest.fixture(scope="module")
def secure_broker(pki: TestPki) -> Iterator[SecureBroker]:
    with SecureBroker(users={USER: PASSWORD}, pki=pki, mechanisms=("SCRAM-SHA-512", "SCRAM-SHA-256")) as b:
        yield b


@pytest.fixture(scope="module")
def secure_system(
    infra: Infra,
    secure_broker: SecureBroker,
    pki: TestPki,
    secrets_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[System]:
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": USER,
        "KAFKA_SASL_PASSWORD_FILE": str(secrets_dir / "password"),
        "KAFKA_SSL_CAFILE": str(pki.ca),
    }
    log_dir = tmp_path_factory.mktemp("secure-system")
    with start_system(
        infra, bootstrap=secure_broker.bootstrap, log_dir=log_dir, label="kafkasec", env=env
    ) as s:
        yield s


def log_of(system: System, name: str) -> str:
    return system.processes[name].log_path.read_text(errors="replace")


def lines_with(system: System, name: str, message: str) -> list[str]:
    return [line for line in log_of(system, name).splitlines() if message in line]


def logged_at(line: str) -> float:
    """Seconds of the line's timestamp (outbox.telemetry.logs text format: `2026-01-31 12:00:00,123 LEVEL …`)."""
    stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()


async def workspaces(system: System, account_ids: list[str]) -> int:
    return int(
        system.scalar(
            "console", "SELECT count(*) FROM workspaces WHERE owner_account_id = ANY(%s)", account_ids
        )
    )


async def pending_in_auth(system: System) -> int:
    return int(system.scalar("auth", "SELECT count(*) FROM outbox WHERE published_at IS NULL"))


def restart_with(system: System, name: str, **changes: str | None) -> dict[str, str]:
    """SIGKILL the process and start it again with these variables changed (None: removed); returns the
    environment it had, for `restore`."""
    process = system.processes[name]
    before = dict(process.env)
    process.kill()
    for key, value in changes.items():
        if value is None:
            process.env.pop(key, None)
        else:
            process.env[key] = value
    process.start()
    return before


async def test_events_flow_refusals_name_the_setting_and_nothing_is_lost(
    secure_system: System, secure_broker: SecureBroker, secrets_dir: Path
) -> None:
    system = secure_system
    bootstrap = secure_broker.bootstrap

    # 1. Everything connected over SASL_SSL: auth's relay → broker → console's consumer.
    first = await register(system, new_credentials("secure"))
    assert await wait_until(
        lambda: workspaces(system, [first["id"]]), timeout=60, what="workspace over SASL_SSL"
    )
    assert await pending_in_auth(system) == 0
    assert USER in secure_broker.gate.authenticated

    # 2. Three processes restarted with one wrong setting each.
    refused = {
        "auth-relay": (
            {"KAFKA_SSL_CAFILE": None},
            f"TLS certificate of broker {bootstrap} not trusted (KAFKA_SSL_CAFILE=unset: system CAs): "
            "unable to get local issuer certificate",
        ),
        "console-consumer": (
            {"KAFKA_SASL_PASSWORD_FILE": str(secrets_dir / "wrong-password")},
            f"broker {bootstrap} refused SASL authentication for user '{USER}' "
            "(KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD): Authentication failed during authentication due to "
            "invalid credentials with SASL mechanism SCRAM-SHA-512",
        ),
        "indexer-relay": (
            {
                "KAFKA_SECURITY_PROTOCOL": "SSL",
                "KAFKA_SASL_MECHANISM": None,
                "KAFKA_SASL_USERNAME": None,
                "KAFKA_SASL_PASSWORD_FILE": None,
            },
            f"broker {bootstrap} closed the connection before serving a request: it requires SASL "
            "authentication (KAFKA_SECURITY_PROTOCOL=SSL; set SASL_SSL with KAFKA_SASL_MECHANISM and "
            "KAFKA_SASL_USERNAME/KAFKA_SASL_PASSWORD)",
        ),
    }
    good_env = {name: restart_with(system, name, **changes) for name, (changes, _) in refused.items()}
    for name, (_, message) in refused.items():

        async def refused_once(name: str = name, message: str = message) -> bool:
            return bool(lines_with(system, name, message))

        await wait_until(refused_once, timeout=60, what=f"{name}'s refusal in its log")

    # 3. Events written meanwhile stay in auth's outbox: nothing reaches console.
    ids = [(await register(system, new_credentials(f"while-refused-{i}")))["id"] for i in range(3)]

    # The consumer backs off 1 s, 2 s, 4 s …: its third refusal comes some 3 s after the first.
    async def consumer_refusals() -> list[str] | None:
        found = lines_with(system, "console-consumer", refused["console-consumer"][1])
        return found if len(found) >= 3 else None

    first_three = (await wait_until(consumer_refusals, timeout=30, what="three consumer refusals"))[:3]
    gaps = [logged_at(b) - logged_at(a) for a, b in itertools.pairwise(first_three)]
    # Each line announces its wait, and the next try comes no sooner (its own time added, on a busy host a
    # second or so).
    assert [line.rsplit("; ", 1)[1] for line in first_three] == [
        f"retrying in {w}s" for w in ("1.0", "2.0", "4.0")
    ]
    assert 0.95 < gaps[0] < 4 and 1.95 < gaps[1] < 5, gaps
    assert await pending_in_auth(system) >= 3 and await workspaces(system, ids) == 0
    for name, (_, message) in refused.items():
        process = system.processes[name]
        assert process.alive, f"{name} exited:\n{process.tail()}"
        assert "Traceback" not in log_of(system, name), process.tail()
        window = logged_at(lines_with(system, name, message)[-1]) - logged_at(
            lines_with(system, name, message)[0]
        )
        # Not a storm: a relay backs off from 50 ms to 5 s (its outage retry), the consumer from 1 s to 60 s.
        assert len(lines_with(system, name, message)) <= 2 * (8 + window / 4), log_of(system, name)

    # 4. Settings fixed, processes restarted: everything written while refused arrives.
    for name, env in good_env.items():
        process = system.processes[name]
        process.kill()
        process.env = env
        process.start()

    async def all_arrived() -> bool:
        return await workspaces(system, ids) == len(ids)

    await wait_until(all_arrived, timeout=90, what="workspaces of the accounts registered while refused")
    assert await pending_in_auth(system) == 0
