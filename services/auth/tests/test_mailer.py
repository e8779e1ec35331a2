"""The mail sender (`python -m auth.mailer`) as a real process, on the real broker, auth's test database
and a real SMTP server (aiosmtpd on a free port): codes arrive once, expired or scrubbed ones never, a 5xx
refusal is dead-lettered and a server that is down or answers 4xx is retried until the mail goes out."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from auth_testkit import Secrets, new_login, strong_password
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from auth.mailer.settings import MailerSettings
from contracts.auth import MAIL_TOPIC, LoginCode, PasswordResetCode
from outbox import outbox_table
from outbox.kafka import bootstrap_from_env
from outbox.ops.dlq import dead_letter_topic, read_dead_letters
from testsupport import ServiceDatabase, ServiceProcess, free_port, wait_until
from testsupport.kafka import consumed, publish

BIN = Path(sys.executable).parent


class Sink:
    """aiosmtpd handler: keeps every accepted mail; `refuse` maps a recipient to an RCPT answer, and the
    first `defer_data` DATA commands answer 451."""

    def __init__(self) -> None:
        self.mails: list[EmailMessage] = []
        self.refuse: dict[str, str] = {}
        self.defer_data = 0
        self.deferred = 0

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.deferred < self.defer_data:
            self.deferred += 1
            return "451 try again later"
        content: Any = envelope.original_content or envelope.content
        self.mails.append(message_from_bytes(content, policy=default))  # type: ignore[arg-type]
        return "250 OK"

    def to(self, email: str) -> list[EmailMessage]:
        return [m for m in self.mails if email in str(m["To"])]


def smtp_server(sink: Sink, port: int) -> Controller:
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    return controller


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler, port = Sink(), free_port()
    controller = smtp_server(handler, port)
    yield handler, port
    controller.stop()


class Mailer:
    def __init__(self, database: ServiceDatabase, smtp_port: int, log_dir: Path) -> None:
        self.group = f"auth-mailer-{uuid.uuid4().hex[:8]}"
        self.env = {
            "MAILER_DATABASE_URL": database.app_url,
            "MAILER_SMTP_PORT": str(smtp_port),
            "MAILER_CONSUMER_NAME": self.group,
            "MAILER_MAX_ATTEMPTS": "40",
            "MAILER_RETRY_MAX_SECONDS": "0.3",
            "OUTBOX_METRICS_PORT": "",
            # A restarted member rejoins once the broker has given up on the one before (this broker).
            "OUTBOX_CONSUMER_SESSION_TIMEOUT_MS": "6000",
        }
        self.log_dir = log_dir
        self.process: ServiceProcess | None = None

    def start(self) -> Mailer:
        argv = [sys.executable, "-m", "auth.mailer"]
        self.process = ServiceProcess("auth-mailer", argv, env=self.env, log_dir=self.log_dir).start()
        return self

    def log(self) -> str:
        assert self.process is not None
        return self.process.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()


@pytest.fixture
def mailer_for(database: ServiceDatabase, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    # Topics of this test's own (the processes inherit it): a new group reads its topic from the start, and
    # the events of other tests would otherwise queue ahead of this one's.
    prefix = f"{os.environ.get('OUTBOX_TOPIC_PREFIX', '')}mailer-{uuid.uuid4().hex[:8]}."
    monkeypatch.setenv("OUTBOX_TOPIC_PREFIX", prefix)
    started: list[Mailer] = []

    def start(smtp_port: int) -> Mailer:
        mailer = Mailer(database, smtp_port, tmp_path).start()
        started.append(mailer)
        return mailer

    yield start
    for mailer in started:
        mailer.stop()


async def inbox(engine: AsyncEngine, group: str, event_id: uuid.UUID) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT outcome FROM inbox WHERE consumer = :c AND event_id = :e"),
            {"c": group, "e": event_id},
        )
        return [r.outcome for r in rows]


def body(mail: EmailMessage) -> str:
    part = mail.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


async def arrived(sink: Sink, email: str, count: int = 1, timeout: float = 30.0) -> list[EmailMessage]:
    async def probe() -> list[EmailMessage] | None:
        mails = sink.to(email)
        return mails if len(mails) >= count else None

    return await wait_until(probe, timeout=timeout, what=f"{count} mail(s) to {email}")


async def test_reset_code_mailed_once_and_usable(
    http: httpx.AsyncClient,
    engine: AsyncEngine,
    seen: Secrets,
    database: ServiceDatabase,
    sink: tuple[Sink, int],
    mailer_for: Any,
    tmp_path: Path,
) -> None:
    """Through auth, its relay and the mailer: the reset code arrives once, and resets the password; the
    same event delivered again after a mailer restart sends nothing."""
    handler, port = sink
    relay_argv = [str(BIN / "outbox"), "relay", "--database-url", database.app_url, "--name", "auth"]
    relay = ServiceProcess("auth-relay", relay_argv, env={"OUTBOX_METRICS_PORT": ""}, log_dir=tmp_path)
    relay.start()
    try:
        mailer = mailer_for(port)
        session = await new_login(http, seen)
        r = await http.post("/auth/api/reset-password", json={"email": session.email})
        assert r.status_code == 202
        [mail] = await arrived(handler, session.email, timeout=60)
    finally:
        relay.terminate()
    assert (
        mail["Subject"] == "Your password reset code" and mail["To"].addresses[0].addr_spec == session.email
    )
    code = body(mail).split("Your password reset code is: ")[1].split()[0]
    seen.add(code)
    assert "expires at" in body(mail)

    # The same event again (same id, the code put back if auth scrubbed it), to a restarted mailer.
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(outbox_table.c.event_id, outbox_table.c.payload).where(
                    outbox_table.c.aggregate_id == session.account_id,
                    outbox_table.c.event_type == PasswordResetCode.TYPE,
                )
            )
        ).one()
    mailer.stop()
    mailer.start()
    event_id = uuid.UUID(str(row.event_id))
    assert await inbox(engine, mailer.group, event_id) == ["applied"]
    again = await publish(
        MAIL_TOPIC,
        PasswordResetCode.TYPE,
        session.account_id,
        {**row.payload, "code": code},
        event_id=event_id,
    )
    await consumed(mailer.group, [again])
    assert len(handler.to(session.email)) == 1
    assert await inbox(engine, mailer.group, event_id) == ["applied"]

    new_password = strong_password()
    seen.add(new_password)
    confirm = await http.post(
        "/auth/api/reset-password/confirm",
        json={"email": session.email, "code": code, "new_password": new_password},
    )
    assert confirm.status_code == 204, confirm.text


def login_code(email: str, *, expires_in: timedelta, code: str | None = "123456") -> dict[str, Any]:
    data = LoginCode(
        account_id=uuid.uuid4(),
        email=email,
        name="Ada",
        code=code or "x",
        expires_at=datetime.now(UTC) + expires_in,
    ).model_dump(mode="json")
    if code is None:
        del data["code"]  # as auth's scrub leaves it
    return data


async def send_event(data: dict[str, Any], event_type: str = LoginCode.TYPE) -> tuple[uuid.UUID, Any]:
    event_id = uuid.uuid4()
    return event_id, await publish(MAIL_TOPIC, event_type, str(data["account_id"]), data, event_id=event_id)


async def test_expired_or_scrubbed_codes_send_nothing(
    engine: AsyncEngine, sink: tuple[Sink, int], mailer_for: Any
) -> None:
    handler, port = sink
    mailer = mailer_for(port)
    tag = uuid.uuid4().hex[:8]
    expired_id, expired = await send_event(login_code(f"expired-{tag}@example.com", expires_in=-timedelta(1)))
    scrubbed_id, scrubbed = await send_event(
        login_code(f"scrubbed-{tag}@example.com", expires_in=timedelta(minutes=5), code=None)
    )
    _, fresh = await send_event(login_code(f"fresh-{tag}@example.com", expires_in=timedelta(minutes=5)))
    await consumed(mailer.group, [expired, scrubbed, fresh])
    [mail] = await arrived(handler, f"fresh-{tag}@example.com")
    assert "Your login code is: 123456" in body(mail) and mail["Subject"] == "Your login code"
    assert not handler.to(f"expired-{tag}@") and not handler.to(f"scrubbed-{tag}@")
    assert await inbox(engine, mailer.group, expired_id) == ["applied"]
    assert await inbox(engine, mailer.group, scrubbed_id) == ["applied"]


async def test_refused_recipient_is_dead_lettered_and_deferral_retried(
    engine: AsyncEngine, sink: tuple[Sink, int], mailer_for: Any
) -> None:
    handler, port = sink
    tag = uuid.uuid4().hex[:8]
    handler.refuse[f"nobody-{tag}@example.com"] = "550 5.1.1 no such mailbox"
    handler.defer_data = 2
    mailer = mailer_for(port)
    refused_id, refused = await send_event(login_code(f"nobody-{tag}@example.com", expires_in=timedelta(1)))
    deferred_id, deferred = await send_event(login_code(f"later-{tag}@example.com", expires_in=timedelta(1)))
    malformed_id, malformed = await send_event(
        {**login_code(f"odd-{tag}@example.com", expires_in=timedelta(1)), "expires_at": "soon"}
    )
    await consumed(mailer.group, [refused, deferred, malformed])
    assert await inbox(engine, mailer.group, refused_id) == ["dead"]
    assert await inbox(engine, mailer.group, malformed_id) == ["dead"]
    assert await inbox(engine, mailer.group, deferred_id) == ["applied"]
    assert len(handler.to(f"later-{tag}@example.com")) == 1 and handler.deferred == 2
    assert not handler.to(f"nobody-{tag}@")
    letters = await read_dead_letters(bootstrap_from_env(), dead_letter_topic(mailer.group))
    [letter] = [d for d in letters if d.header("ce_id") == str(refused_id)]
    assert "550" in (letter.header("dlq_reason") or "") and letter.header("dlq_attempts") == "1"
    [odd] = [d for d in letters if d.header("ce_id") == str(malformed_id)]
    assert "malformed" in (odd.header("dlq_reason") or "") and odd.header("dlq_attempts") == "1"


async def test_a_server_down_is_retried_until_it_is_back(engine: AsyncEngine, mailer_for: Any) -> None:
    port = free_port()
    mailer = mailer_for(port)  # nothing listens there yet: connections are refused
    tag = uuid.uuid4().hex[:8]
    event_id, _ = await send_event(login_code(f"patient-{tag}@example.com", expires_in=timedelta(1)))

    async def refused() -> bool:
        return f"could not send {event_id}" in mailer.log()

    await wait_until(refused, timeout=30, what="the mailer's first refused connection")
    assert await inbox(engine, mailer.group, event_id) == []
    handler = Sink()
    controller = smtp_server(handler, port)
    try:
        await arrived(handler, f"patient-{tag}@example.com")
        assert await inbox(engine, mailer.group, event_id) == ["applied"]
        await asyncio.sleep(0.5)
        assert len(handler.to(f"patient-{tag}@example.com")) == 1
    finally:
        controller.stop()


def test_smtp_password_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "smtp-password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("MAILER_SMTP_PASSWORD_FILE", str(secret))
    monkeypatch.setenv("MAILER_SMTP_SECURITY", "starttls")
    settings = MailerSettings()
    assert settings.smtp_password is not None and settings.smtp_password.get_secret_value() == "s3cret"
    assert settings.smtp_security == "starttls" and settings.consumer_name == "auth-mailer"
