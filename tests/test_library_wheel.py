"""kafka-txoutbox as a user gets it: the built wheel installs into a clean virtual environment and imports,
with only the OpenTelemetry API by default and the SDK/exporters with the `otel` extra; its public names
(`outbox.__all__`, `outbox.testing`) are all there and resolve."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

CHECK_PLAIN = """
import sys, outbox, outbox.ops.cli, outbox.relay.runner, outbox.consumer.runner, outbox.telemetry.metrics
from outbox import Event, EventTooLarge, IdempotentConsumer, OutboxWriter, Relay, setup_tracing
setup_tracing("wheel-test")  # nothing configured: a no-op, no SDK needed
from outbox.telemetry.metrics import setup_metrics
setup_metrics("wheel-test")  # the SDK is missing: instruments stay no-ops, nothing raises
assert not any(name.startswith("opentelemetry.sdk") for name in sys.modules), "the SDK was imported"
# The public API as it stood before the library's re-layout (issue 23): it may grow, never shrink.
PINNED = {
    "BatchContext", "ConsumerSettings", "Event", "EventContext", "EventTooLarge", "HandlerCommitted",
    "IdempotentConsumer", "MalformedMessage", "OutboxWriter", "Outcome", "ReceivedEvent", "Reject", "Relay",
    "RelaySettings", "consumer_versions_table", "create_tables", "inbox_table", "metadata", "outbox_table",
    "setup_tracing",
}
assert PINNED <= set(outbox.__all__), sorted(PINNED - set(outbox.__all__))
assert all(getattr(outbox, name) is not None for name in outbox.__all__)
import outbox.testing, outbox.kafka, outbox.migrations, outbox.telemetry.tracing
assert all(getattr(outbox.testing, name) is not None for name in outbox.testing.__all__)
try:
    import opentelemetry.sdk
except ImportError:
    print("no sdk")
"""

CHECK_OTEL = """
import os, outbox
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
outbox.setup_tracing("wheel-test")
from outbox.telemetry.metrics import setup_metrics, prometheus_text
setup_metrics("wheel-test")
assert isinstance(trace.get_tracer_provider(), TracerProvider)
assert isinstance(metrics.get_meter_provider(), MeterProvider)
with trace.get_tracer("t").start_as_current_span("one"):
    pass
trace.get_tracer_provider().force_flush()  # spans reach the file in batches (OTEL_SPANS_FILE_DELAY_MS)
print("otel ok", os.path.getsize(os.environ["OTEL_SPANS_FILE"]) > 0)
"""


def uv() -> str:
    found = os.environ.get("UV") or shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    assert Path(found).exists(), "uv is needed to build the wheel (make setup installs it)"
    return found


def run(*argv: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, f"{argv}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(
        uv(),
        "build",
        "--package",
        "kafka-txoutbox",
        "--wheel",
        "--out-dir",
        str(out),
        "--directory",
        str(ROOT),
    )
    [built] = out.glob("kafka_txoutbox-*.whl")
    return built


def venv_with(tmp: Path, requirement: str) -> Path:
    run(sys.executable, "-m", "venv", str(tmp / "venv"))
    python = tmp / "venv" / "bin" / "python"
    run(uv(), "pip", "install", "--python", str(python), requirement)
    return python


def test_the_wheel_installs_and_imports_with_the_otel_api_only(wheel: Path, tmp_path: Path) -> None:
    python = venv_with(tmp_path, f"kafka-txoutbox[binary] @ {wheel.as_uri()}")
    assert "no sdk" in run(str(python), "-c", CHECK_PLAIN)
    assert "usage: outbox" in run(str(tmp_path / "venv" / "bin" / "outbox"), "--help")
    metadata = run(str(python), "-c", "import importlib.metadata as m; print(m.metadata('kafka-txoutbox'))")
    assert "License-Expression: MIT" in metadata and "Classifier: Typing :: Typed" in metadata
    assert "Provides-Extra: otel" in metadata and "kafka-txoutbox" in metadata


def test_the_otel_extra_brings_the_sdk_and_exporters(wheel: Path, tmp_path: Path) -> None:
    python = venv_with(tmp_path, f"kafka-txoutbox[binary,otel] @ {wheel.as_uri()}")
    env = {**os.environ, "OTEL_SPANS_FILE": str(tmp_path / "spans.jsonl")}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    assert "otel ok True" in run(str(python), "-c", CHECK_OTEL, env=env)
