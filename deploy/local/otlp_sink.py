"""A stand-in for Jaeger's OTLP/HTTP receiver where no Jaeger image or binary exists (deploy/compose.local.yml).

    python otlp_sink.py --port 24318 --out /spans/otlp-spans.jsonl

Accepts `POST /v1/traces` (OTLP/HTTP, protobuf, optionally gzip: what every process's OTLP exporter sends) and
appends one JSON object per span to the output file, in the format of the library's OTEL_SPANS_FILE (trace_id,
span_id, parent_id, name, service, kind, start/end in Unix nanoseconds, status, attributes), so
`outbox trace FILE` renders it. `GET /healthz` answers 200.
Runs from the application image, which has opentelemetry-proto and protobuf installed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

_lock = threading.Lock()


def _value(attribute: dict[str, Any]) -> Any:
    value = attribute.get("value", {})
    return next(iter(value.values()), None) if value else None


def spans(request: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    out = []
    for resource_spans in request.resource_spans:
        service = next(
            (a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"), ""
        )
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                as_dict = MessageToDict(span)
                out.append(
                    {
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_id": span.parent_span_id.hex() or None,
                        "name": span.name,
                        "service": service,
                        "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                        "status": Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                        "attributes": {a["key"]: str(_value(a)) for a in as_dict.get("attributes", [])},
                    }
                )
    return out


def handler(out: Path) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # one line per request is noise here
            pass

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._answer(200, b'{"status":"ok"}', "application/json")
            else:
                self._answer(404, b"", "text/plain")

        def do_POST(self) -> None:
            if self.path != "/v1/traces":
                self._answer(404, b"", "text/plain")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            lines = "".join(json.dumps(s) + "\n" for s in spans(ExportTraceServiceRequest.FromString(body)))
            with _lock, out.open("a") as f:
                f.write(lines)
            self._answer(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4318)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.touch()
    server = ThreadingHTTPServer((args.host, args.port), handler(args.out))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop at once, also as PID 1
    print(f"otlp sink on {args.host}:{args.port}, spans to {args.out}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
