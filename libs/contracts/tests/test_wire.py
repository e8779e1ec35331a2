"""The contracts keep the wire format: the same type strings, topics and JSON field names as the payloads
the services wrote by hand before (other tests read these events on the wire), and parsing is tolerant
where the consumers always were."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from contracts import auth, console, indexer

DOC, DS, WS = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def test_console_document_event() -> None:
    state = console.DocumentState(
        document_id=DOC,
        dataset_id=DS,
        workspace_id=WS,
        owner_account_id="owner",
        name="n",
        text="t",
        enabled=True,
        archived=False,
        deleted=False,
        version=3,
    )
    event = state.to_event(console.DocumentEventType.ENABLED)
    assert (event.topic, event.type, event.aggregate_id, event.version) == (
        "console.document",
        "console.document.enabled",
        str(DOC),
        3,
    )
    assert event.data == {
        "document_id": str(DOC),
        "dataset_id": str(DS),
        "workspace_id": str(WS),
        "owner_account_id": "owner",
        "name": "n",
        "text": "t",
        "enabled": True,
        "archived": False,
        "deleted": False,
        "version": 3,
    }
    assert console.DocumentState.model_validate({**event.data, "unknown_future_field": 1}) == state
    assert [t.value for t in console.DocumentEventType] == [
        f"console.document.{verb}"
        for verb in (
            "created",
            "updated",
            "enabled",
            "disabled",
            "archived",
            "unarchived",
            "deleted",
            "snapshot",
        )
    ]


def test_indexer_reports() -> None:
    indexed = indexer.DocumentIndexed(document_id=DOC, dataset_id=DS, segment_count=2, searchable=True)
    event = indexed.to_event(4)
    assert (event.topic, event.type, event.aggregate_id, event.version) == (
        "indexer.document",
        "indexer.document.indexed",
        str(DOC),
        4,
    )
    assert event.data == {
        "document_id": str(DOC),
        "dataset_id": str(DS),
        "segment_count": 2,
        "searchable": True,
    }
    failed = indexer.DocumentIndexFailed(document_id=DOC, dataset_id=DS, reason="r").to_event(4)
    assert (failed.type, failed.data["reason"]) == ("indexer.document.index_failed", "r")
    indexing = indexer.DocumentIndexing(document_id=DOC, dataset_id=DS).to_event(4)
    assert (indexing.type, indexing.data) == (
        "indexer.document.indexing",
        {"document_id": str(DOC), "dataset_id": str(DS)},
    )
    # Consumers parse by type; a version copied into the data and fields they do not read are ignored.
    parsed = indexer.parse_report("indexer.document.indexed", {**event.data, "version": 4})
    assert parsed == indexed
    assert indexer.parse_report(
        "indexer.document.indexed", {"document_id": str(DOC), "dataset_id": str(DS), "segment_count": 1}
    )
    assert indexer.parse_report("indexer.document.reindexed", {}) is None
    # The workspace (finding 9): carried when given, absent (None) in reports from older indexers.
    workspace = uuid.uuid4()
    named = indexer.DocumentIndexing(document_id=DOC, dataset_id=DS, workspace_id=workspace).to_event(4)
    assert named.data == {"document_id": str(DOC), "dataset_id": str(DS), "workspace_id": str(workspace)}
    assert indexer.parse_report(named.type, dict(named.data)) == indexer.DocumentIndexing(
        document_id=DOC, dataset_id=DS, workspace_id=workspace
    )
    older = indexer.parse_report(indexing.type, dict(indexing.data))
    assert older is not None and older.workspace_id is None
    with pytest.raises(ValidationError):
        indexer.parse_report("indexer.document.index_failed", {"document_id": str(DOC)})


def test_auth_events() -> None:
    account = uuid.uuid4()
    registered = auth.AccountRegistered(
        account_id=account, email="a@example.com", name="A", version=1
    ).to_event()
    assert (registered.topic, registered.type, registered.aggregate_id, registered.version) == (
        "auth.account",
        "auth.account.registered",
        str(account),
        1,
    )
    assert registered.data == {
        "account_id": str(account),
        "email": "a@example.com",
        "name": "A",
        "version": 1,
    }
    changed = auth.PasswordChanged(account_id=account, email="a@example.com", version=2, reason="reset")
    assert changed.to_event().type == "auth.account.password_changed"
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    code = auth.LoginCode(
        account_id=account, email="e", name="n", code="123456", expires_at=expires
    ).to_event()
    assert (code.topic, code.type, code.version) == ("auth.mail", "auth.mail.login_code", None)
    assert code.data == {
        "account_id": str(account),
        "email": "e",
        "name": "n",
        "code": "123456",
        "expires_at": "2030-01-01T00:00:00Z",
    }
    reset_id = uuid.uuid4()
    reset = auth.PasswordResetCode(
        account_id=account, email="e", name="n", reset_id=reset_id, code="1", expires_at=expires
    ).to_event()
    assert reset.type == "auth.mail.password_reset_code" and reset.data["reset_id"] == str(reset_id)
    assert set(auth.SECRET_FIELDS) <= set(reset.data)


def test_a_mail_sender_gets_nothing_to_send_from_a_scrubbed_or_unknown_mail_event() -> None:
    """Finding 8: auth scrubs the code from dead `auth.mail` rows too; a redrive of one must not crash a
    mail sender (retried, then dead-lettered) but read as nothing to send."""
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    login = auth.LoginCode(
        account_id=uuid.uuid4(), email="e", name="n", code="123456", expires_at=expires
    ).to_event()
    assert auth.parse_mail(login.type, login.data) == auth.LoginCode.model_validate(login.data)
    scrubbed = {k: v for k, v in login.data.items() if k not in auth.SECRET_FIELDS}
    assert auth.parse_mail(login.type, scrubbed) is None
    assert auth.parse_mail(login.type, {**scrubbed, "code": None}) is None
    assert auth.parse_mail("auth.mail.newsletter", login.data) is None
    with pytest.raises(ValidationError):  # anything else malformed is still an error
        auth.parse_mail(login.type, {**login.data, "expires_at": "soon"})
