"""From a request to its trace (servicekit.request_trace), on a real uvicorn process serving a small
`create_service_app` service (traced_app.py): the trace headers on every kind of answer, the access log
line in both formats (request id and trace id), the request id on the server span."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from testsupport import HttpService
from testsupport.broker import poll_until

HERE = Path(__file__).resolve().parent
TRACERESPONSE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


def _serve(tmp: Path, name: str, log_format: str) -> HttpService:
    env = {
        "PYTHONPATH": str(HERE),
        "LOG_FORMAT": log_format,
        "LOG_LEVEL": "INFO",
        "OTEL_SPANS_FILE": str(tmp / "spans.jsonl"),
    }
    return HttpService(name, "traced_app:create_app", env=env, log_dir=tmp).start()


@pytest.fixture(scope="module")
def json_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpService]:
    service = _serve(tmp_path_factory.mktemp("kit-json"), "kit-json", "json")
    yield service
    service.terminate()


@pytest.fixture(scope="module")
def text_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpService]:
    service = _serve(tmp_path_factory.mktemp("kit-text"), "kit-text", "text")
    yield service
    service.terminate()


def _trace_id(response: httpx.Response) -> str:
    """The trace id of a response, checking that both headers name the same one."""
    found = TRACERESPONSE.fullmatch(response.headers.get("traceresponse", ""))
    assert found, dict(response.headers)
    assert response.headers["x-trace-id"] == found.group(1)
    return found.group(1)


def _json_line(service: HttpService, request_id: str) -> dict[str, Any]:
    """The access log line of `request_id` (written once the response is sent: waited for)."""
    found: list[dict[str, Any]] = []

    def written() -> bool:
        lines = service.log_path.read_text().splitlines()
        found.extend(
            entry
            for entry in map(json.loads, lines)
            if entry.get("logger") == "servicekit.access" and entry.get("request_id") == request_id
        )
        return bool(found)

    poll_until(written, timeout=10, what=f"the access log line of {request_id}")
    return found[0]


def _text_line(service: HttpService, request_id: str) -> str:
    found: list[str] = []

    def written() -> bool:
        found.extend(
            line
            for line in service.log_path.read_text().splitlines()
            if "servicekit.access" in line and f"request_id={request_id} " in line
        )
        return bool(found)

    poll_until(written, timeout=10, what=f"the access log line of {request_id}")
    return found[0]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/kit/ok?q=secret-term", None, 200),
        ("GET", "/kit/missing", None, 404),  # a ServiceError's JSON
        ("POST", "/kit/items", b'{"nope": 1}', 422),  # validation
        ("POST", "/kit/items", b"x" * 2048, 413),  # the body-limit middleware's own answer
        ("GET", "/kit/boom", None, 500),  # an unhandled exception
    ],
    ids=["200", "404", "422", "413", "500"],
)
def test_every_answer_carries_its_trace_id_and_is_logged_as_json_with_it(
    json_service: HttpService, method: str, path: str, body: bytes | None, status: int
) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    answer = httpx.request(
        method,
        json_service.base_url + path,
        content=body,
        headers={"X-Request-ID": request_id, "content-type": "application/json"},
    )
    assert answer.status_code == status, answer.text
    if status >= 400:
        assert answer.json()["error"]["code"], answer.text
    trace_id = _trace_id(answer)
    assert "x-request-id" not in answer.headers  # the gateway's own: it sets the header once, itself

    line = _json_line(json_service, request_id)
    assert line["trace_id"] == trace_id and line["span_id"] == answer.headers["traceresponse"][36:52]
    assert (line["method"], line["path"], line["status"]) == (method, path.split("?")[0], status)
    assert line["service"] == "kit" and line["level"] == "INFO"
    assert "secret-term" not in json_service.log_path.read_text()  # no query string in the log


def test_every_line_of_a_json_process_is_json_uvicorns_own_too(json_service: HttpService) -> None:
    httpx.get(json_service.base_url + "/kit/ok")
    lines = json_service.log_path.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # raises on a plain line
    loggers = {entry["logger"] for entry in entries}
    assert {"uvicorn.error", "servicekit.access"} <= loggers, loggers
    assert "uvicorn.access" not in loggers  # replaced, not doubled
    assert not any(e.get("path") == "/healthz" for e in entries)  # probes stay out (DEBUG)


def test_the_text_access_log_carries_request_id_and_trace_id(text_service: HttpService) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    answer = httpx.get(text_service.base_url + "/kit/missing", headers={"X-Request-ID": request_id})
    trace_id = _trace_id(answer)
    line = _text_line(text_service, request_id)
    assert '"GET /kit/missing" 404' in line and f"trace_id={trace_id}" in line, line
    assert not any(" uvicorn.access" in x for x in text_service.log_path.read_text().splitlines())


def test_a_clients_traceparent_is_continued_and_named_back(text_service: HttpService) -> None:
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    answer = httpx.get(
        text_service.base_url + "/kit/ok", headers={"traceparent": f"00-{trace_id}-{parent}-01"}
    )
    assert _trace_id(answer) == trace_id
    assert answer.headers["traceresponse"][36:52] != parent  # the service's own server span


@pytest.mark.parametrize("sent", [None, 'bad"id', "x" * 65])
def test_without_a_safe_request_id_the_service_makes_one_and_returns_it(
    text_service: HttpService, sent: str | None
) -> None:
    headers = {"X-Request-ID": sent} if sent else {}
    answer = httpx.get(text_service.base_url + "/kit/ok", headers=headers)
    made = answer.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made), made
    assert f"trace_id={_trace_id(answer)}" in _text_line(text_service, made)


def test_the_request_id_is_an_attribute_of_the_server_span(text_service: HttpService) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    trace_id = _trace_id(httpx.get(text_service.base_url + "/kit/ok", headers={"X-Request-ID": request_id}))
    spans_file = text_service.log_path.parent / "spans.jsonl"

    def server_span() -> dict[str, Any] | None:
        if not spans_file.exists():  # spans are written in batches (OTEL_SPANS_FILE_DELAY_MS): not yet
            return None
        for line in spans_file.read_text().splitlines():
            span = json.loads(line)
            if span["trace_id"] == trace_id and span["kind"] == "SERVER":
                return dict(span)
        return None

    poll_until(lambda: server_span() is not None, timeout=10, what="the server span in the spans file")
    span = server_span()
    assert span is not None and span["attributes"]["request.id"] == request_id, span


def test_a_path_cannot_forge_a_second_log_line(text_service: HttpService) -> None:
    request_id = f"req-{uuid.uuid4().hex}"
    forged = "/kit/x%0A2026-01-01 00:00:00,000 INFO servicekit.access: forged"
    httpx.get(text_service.base_url + forged, headers={"X-Request-ID": request_id})
    line = _text_line(text_service, request_id)
    assert '"GET /kit/x%0A2026-01-01' in line, line  # logged as sent, on its one line
    assert not any(
        x.endswith("servicekit.access: forged") for x in text_service.log_path.read_text().splitlines()
    )
