"""Session infrastructure for the e2e suite (local or testcontainers, see infra/backend.py) and
dedicated brokers for tests that cut, slow or restart the broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.e2e.infra import Infra, start_infra
from tests.e2e.system import System, start_system
from testsupport.broker import BrokerBehindProxy, MotoS3, TansuBroker


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """PostgreSQL, Redis and a broker for the whole session, from the back end E2E_BACKEND picks."""
    with start_infra() as infra:
        yield infra


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """A local S3 (moto) for brokers that must survive a restart; each broker gets its own bucket."""
    with MotoS3() as s3:
        yield s3


@pytest.fixture
def broker_behind_proxy() -> Iterator[BrokerBehindProxy]:
    """A dedicated broker (memory storage) advertising a TCP proxy: `.proxy.cut()` / `.restore()`."""
    with BrokerBehindProxy() as b:
        yield b


@pytest.fixture
def restartable_broker(moto_s3: MotoS3) -> Iterator[TansuBroker]:
    """A dedicated broker on s3 storage: `.restart()` (SIGKILL + start) keeps topics, records, offsets."""
    with TansuBroker(s3=moto_s3) as broker:
        yield broker


@pytest.fixture
def make_broker(moto_s3: MotoS3) -> Iterator[Callable[..., BrokerBehindProxy]]:
    """Factory for chaos tests: `make_broker(durable=True)` = s3 storage behind a proxy; all stopped after."""
    made: list[BrokerBehindProxy] = []

    def make(*, durable: bool = True, latency: float = 0.0) -> BrokerBehindProxy:
        b = BrokerBehindProxy(s3=moto_s3 if durable else None, latency=latency).start()
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


@pytest.fixture(scope="session")
def system(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    """The whole system (tests/e2e/system.py) on the session's broker, for tests that do not break it."""
    log_dir = tmp_path_factory.mktemp("system")
    with start_system(infra, bootstrap=infra.kafka_bootstrap, log_dir=log_dir, label="journey") as s:
        yield s


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that used a system gets the tail of every process's log in its report."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, System):
                report.sections.append((f"system {value.run}: process logs", value.tails()))
