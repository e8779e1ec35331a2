"""The event catalogue (docs/events/): current with the contracts, valid AsyncAPI 3.0 by the AsyncAPI
project's published JSON Schema (vendored) and by its own parser (`@asyncapi/parser`, installed with npm
into .tools/asyncapi-parser/), and in agreement with every event type the contracts define."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from enum import StrEnum
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jsonschema.exceptions import best_match
from pydantic import BaseModel

from contracts import auth, catalogue, console, indexer
from libs.contracts.tests.catalogue_support import EVENTS, FORMATS, ROOT, document, refs, resolve, schema_file
from outbox.envelope import encode_headers

VENDORED = Path(__file__).parent / "asyncapi"
PARSER_DIR = ROOT / ".tools" / "asyncapi-parser"
REGENERATE = "regenerate with `make catalogue` (python scripts/catalogue.py) and commit docs/events/"


def test_the_checked_in_catalogue_is_what_the_contracts_render() -> None:
    files = catalogue.render()
    for name, text in sorted(files.items()):
        path = EVENTS / name
        assert path.exists(), f"docs/events/{name} is missing: {REGENERATE}"
        assert path.read_text(encoding="utf-8") == text, f"docs/events/{name} is stale: {REGENERATE}"
    left_over = {str(p.relative_to(EVENTS)) for p in (EVENTS / catalogue.SCHEMA_DIR).glob("*.json")} - set(
        files
    )
    assert not left_over, f"docs/events has files of no event type {sorted(left_over)}: {REGENERATE}"


def test_the_generator_writes_every_file_and_removes_a_left_over_one(tmp_path: Path) -> None:
    from scripts.catalogue import stale, write

    (tmp_path / catalogue.SCHEMA_DIR).mkdir()
    (tmp_path / catalogue.SCHEMA_DIR / "auth.account.renamed.json").write_text("{}")
    assert {catalogue.ASYNCAPI_FILE, "schemas/auth.account.renamed.json"} <= set(stale(tmp_path))
    write(tmp_path)
    assert stale(tmp_path) == []
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.json")} == set(catalogue.render())


def test_the_document_is_valid_by_the_published_asyncapi_3_0_0_schema() -> None:
    schema = json.loads((VENDORED / "asyncapi-3.0.0.schema.json").read_text(encoding="utf-8"))
    validator = jsonschema.Draft7Validator(schema)
    doc = document()
    error = best_match(validator.iter_errors(doc))
    assert error is None, f"not AsyncAPI 3.0.0 at /{'/'.join(map(str, error.absolute_path))}: {error.message}"
    for ref in refs(doc):  # the JSON Schema cannot tell a dangling reference
        resolve(doc, ref)
    # The vendored schema does reject what is not AsyncAPI 3.0.0 (a 2.x verb, a wrong binding version).
    doc["operations"]["auth.send.auth.account"]["action"] = "publish"
    assert best_match(validator.iter_errors(doc)) is not None


@pytest.fixture(scope="session")
def asyncapi_parser() -> Path:
    """`validate.mjs` beside @asyncapi/parser, installed once per checkout with `npm ci` from the pinned
    package-lock.json (again when the pin changes, or after an install that did not finish). Without
    Node.js or npm, or when the install fails, the parser's test is skipped, except in CI (CI=true),
    where that fails: the JSON Schema test above runs everywhere."""
    node, npm = shutil.which("node"), shutil.which("npm")
    problem = None if node and npm else "Node.js and npm are needed for the AsyncAPI parser"
    lock = (VENDORED / "package-lock.json").read_bytes()
    done_marker = PARSER_DIR / "installed.lock"  # written once `npm ci` succeeded, a copy of its lock
    if problem is None and not (done_marker.exists() and done_marker.read_bytes() == lock):
        done_marker.unlink(missing_ok=True)
        PARSER_DIR.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(VENDORED / name, PARSER_DIR / name)
        assert npm is not None
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
            cwd=PARSER_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode == 0:
            done_marker.write_bytes(lock)
        else:
            problem = f"npm ci of @asyncapi/parser failed: {done.stderr.strip()[-2000:]}"
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    shutil.copyfile(VENDORED / "validate.mjs", PARSER_DIR / "validate.mjs")
    return PARSER_DIR / "validate.mjs"


def parse(script: Path, path: Path) -> tuple[int, list[dict[str, Any]]]:
    done = subprocess.run(
        ["node", str(script), str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert not done.stderr.strip(), done.stderr
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()]


def test_the_asyncapi_parser_accepts_the_document(asyncapi_parser: Path, tmp_path: Path) -> None:
    returncode, diagnostics = parse(asyncapi_parser, EVENTS / catalogue.ASYNCAPI_FILE)
    # Severity 0 is an error, 1 a warning; information (2) and hints (3), such as "3.1.0 is out", pass.
    serious = [d for d in diagnostics if d["severity"] <= 1]
    assert returncode == 0 and not serious, serious
    # The parser does check: an operation on a channel that does not exist is an error.
    broken = document()
    broken["operations"]["indexer.send.indexer.document"]["channel"]["$ref"] = "#/channels/indexer.reports"
    (tmp_path / "broken.json").write_text(json.dumps(broken), encoding="utf-8")
    returncode, diagnostics = parse(asyncapi_parser, tmp_path / "broken.json")
    assert returncode == 1 and "invalid-ref" in {d["code"] for d in diagnostics if d["severity"] == 0}


def contract_topics_and_types() -> tuple[set[str], set[str]]:
    """Found in the contract modules themselves, not through the catalogue: the topic constants, the
    values of their event-type enums and the `TYPE` of their payload models."""
    topics: set[str] = set()
    types: set[str] = set()
    for module in (auth, console, indexer):
        for name, value in vars(module).items():
            if isinstance(value, str) and (name == "TOPIC" or name.endswith("_TOPIC")):
                topics.add(value)
            if not isinstance(value, type) or value.__module__ != module.__name__:
                continue
            if issubclass(value, StrEnum):
                types |= {member.value for member in value}
            elif issubclass(value, BaseModel) and isinstance(event_type := getattr(value, "TYPE", None), str):
                types.add(event_type)  # a base such as AccountEvent declares TYPE without a value
    return topics, types


def test_every_contract_event_is_in_the_document_on_its_topic() -> None:
    doc = document()
    topics, types = contract_topics_and_types()
    # The finder itself still finds them (a constant, an enum, a model's TYPE).
    assert {auth.MAIL_TOPIC, console.TOPIC} <= topics
    assert {console.DocumentEventType.SNAPSHOT, auth.LoginCode.TYPE, indexer.ReportType.INDEXED} <= types
    missing = types - set(doc["components"]["messages"])
    assert not missing, f"event types not in the catalogue {sorted(missing)}: add an example to " + (
        f"contracts.catalogue.catalogued(), then {REGENERATE}"
    )
    channels = {channel["address"]: channel for channel in doc["channels"].values()}
    assert set(channels) == topics
    on_channel = {
        event_type: address for address, channel in channels.items() for event_type in channel["messages"]
    }
    assert set(on_channel) == types == set(doc["components"]["messages"])
    for event_type, address in on_channel.items():
        assert event_type.startswith(f"{address}."), (event_type, address)
    # Each topic is sent by one operation, with every message of its channel.
    sent = {resolve(doc, op["channel"]["$ref"])["address"]: op for op in doc["operations"].values()}
    assert set(sent) == topics and all(op["action"] == "send" for op in sent.values())
    for address, op in sent.items():
        assert {resolve(doc, m["$ref"])["$ref"].rsplit("/", 1)[-1] for m in op["messages"]} == set(
            channels[address]["messages"]
        )


def test_each_message_has_its_model_schema_headers_and_key() -> None:
    """The payload schema is the model's own (plus the `version` the writer adds), its example is what
    `to_event` builds and the model parses, and the headers are the ones the envelope writes."""
    doc = document()
    entries = catalogue.catalogued()
    assert {e.event.type for e in entries} == contract_topics_and_types()[1]
    owners = {topic.address: topic.producer for topic in catalogue.TOPICS}
    for entry in entries:
        event = entry.event
        message = doc["components"]["messages"][event.type]
        assert event.type in doc["channels"][event.topic]["messages"]
        payload = resolve(doc, message["payload"]["$ref"])
        model = entry.model.model_json_schema()
        assert {k: v for k, v in payload.items() if k not in ("properties", "required")} == {
            k: v for k, v in model.items() if k not in ("properties", "required")
        }
        added = {"version"} if event.version is not None and "version" not in model["properties"] else set()
        assert set(payload["properties"]) == set(model["properties"]) | added
        assert all(payload["properties"][name] == spec for name, spec in model["properties"].items())
        assert set(payload["required"]) == set(model.get("required", [])) | added

        example = message["examples"][0]
        assert example["payload"] == catalogue.wire_data(event)
        assert entry.model.model_validate(example["payload"]).model_dump(mode="json").items() <= (
            example["payload"].items()
        )
        jsonschema.validate(
            example["payload"], payload, cls=jsonschema.Draft7Validator, format_checker=FORMATS
        )
        jsonschema.validate(
            example["headers"], message["headers"], cls=jsonschema.Draft7Validator, format_checker=FORMATS
        )
        headers = message["headers"]
        assert headers["properties"]["ce_type"]["const"] == example["headers"]["ce_type"] == event.type
        assert headers["properties"]["ce_source"]["const"] == owners[event.topic]
        assert ("ce_aggregateversion" in headers["required"]) is (event.version is not None)
        # Key = aggregate id = ce_subject, one field of the payload.
        key = message["bindings"]["kafka"]["key"]
        assert example["headers"]["ce_subject"] == event.aggregate_id
        assert example["payload"][catalogue.key_field(event)] == event.aggregate_id
        assert key["type"] == "string" and catalogue.key_field(event) in key["description"]
        # The standalone JSON Schema file says the same and accepts the example.
        standalone = schema_file(event.type)
        jsonschema.Draft202012Validator.check_schema(standalone)
        assert standalone["properties"] == payload["properties"]
        jsonschema.validate(
            example["payload"], standalone, cls=jsonschema.Draft202012Validator, format_checker=FORMATS
        )


def test_the_headers_schema_names_every_header_the_envelope_writes() -> None:
    """A header added to `encode_headers` must be catalogued: every optional argument given here."""
    written = encode_headers(
        event_id="e",
        event_type="t",
        source="s",
        subject="a",
        time="2026-01-01T00:00:00+00:00",
        version=2,
        trace_context={"traceparent": "p", "tracestate": "s"},
        prev_version=1,
    )
    doc = document()
    versioned = doc["components"]["messages"][console.DocumentEventType.ENABLED]["headers"]["properties"]
    assert {name for name, _ in written} <= set(versioned)
