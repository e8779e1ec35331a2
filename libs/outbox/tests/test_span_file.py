"""The spans file (outbox.telemetry.span_file): size-capped with rotated backups, shared by several processes, and
read back as one set by `outbox trace` (outbox.trace_view.load_spans)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from outbox.ops.trace_view import load_spans, span_files
from outbox.telemetry.span_file import JsonLinesSpanExporter

WRITER = """
import sys
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from outbox.telemetry.span_file import JsonLinesSpanExporter

path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
provider = TracerProvider(resource=Resource.create({"service.name": name}))
provider.add_span_processor(SimpleSpanProcessor(JsonLinesSpanExporter(path)))
tracer = provider.get_tracer("test")
for i in range(count):
    with tracer.start_as_current_span(f"{name} {i}", attributes={"padding": "x" * 200}):
        pass
"""


def _tracer(path: Path, *, max_bytes: int, backups: int) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "writer"}))
    provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesSpanExporter(str(path), max_bytes=max_bytes, backups=backups))
    )
    return provider


def test_the_set_never_outgrows_its_cap_and_the_oldest_spans_go_first(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    tracer = _tracer(path, max_bytes=4_000, backups=2).get_tracer("test")
    for i in range(300):  # ~100 KB of spans into a set capped at 3 x 4 KB
        with tracer.start_as_current_span(f"span {i}"):
            pass
    files = span_files(path)
    assert [f.name for f in files] == ["spans.jsonl.2", "spans.jsonl.1", "spans.jsonl"]
    assert not (tmp_path / "spans.jsonl.3").exists()
    assert all(0 < f.stat().st_size <= 4_000 for f in files), [f.stat().st_size for f in files]
    names = [s["name"] for s in sorted(load_spans(path), key=lambda s: s["start"])]
    assert names[-1] == "span 299" and "span 0" not in names  # the newest kept, the oldest dropped
    numbers = [int(n.split()[1]) for n in names]
    assert numbers == list(range(numbers[0], 300))  # read across the rotated files, nothing missing between


def test_processes_sharing_the_file_lose_no_span_across_rotations(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    env = {"OTEL_SPANS_FILE_MAX_BYTES": "20000", "OTEL_SPANS_FILE_BACKUPS": "1000"}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), f"writer-{n}", "400"],
            env={**os.environ, **env},
        )
        for n in range(4)
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    files = span_files(path)
    assert len(files) > 10  # rotated many times while four processes wrote
    assert all(f.stat().st_size <= 20_000 for f in files), max(f.stat().st_size for f in files)
    for f in files:  # no line split or interleaved by a rotation or a concurrent write
        assert all(
            line.startswith('{"trace_id"') and line.endswith("}") for line in f.read_text().splitlines()
        )
    spans = load_spans(path)
    assert len(spans) == 1600
    assert {s["service"] for s in spans} == {f"writer-{n}" for n in range(4)}


def test_no_cap_keeps_one_growing_file(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    tracer = _tracer(path, max_bytes=0, backups=2).get_tracer("test")
    for i in range(50):
        with tracer.start_as_current_span(f"span {i}"):
            pass
    assert span_files(path) == [path] and len(load_spans(path)) == 50
