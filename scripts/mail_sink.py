"""A local SMTP sink for `make run`: accepts every mail (no TLS, no login) and writes each to
`$STACK_DIR/mail/<time>-<recipient>.eml` (`.stack/mail/` by default), logging a line per mail, so a person
can read the code auth sent. Never for anything but a local run.

    python scripts/mail_sink.py [--host 127.0.0.1] [--port 1025] [--dir .stack/mail]
    python scripts/mail_sink.py --latest [--to ADDRESS]    # make mail [TO=ADDRESS]: print the latest mail

`--latest` needs only Python's standard library (no setup, no uv); it exits 1 when no mail matches.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time
from email import message_from_bytes
from email.policy import default
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiosmtpd.smtp import SMTP, Envelope, Session

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("STACK_DIR", ROOT / ".stack"))


class FileSink:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content: Any = envelope.original_content or envelope.content
        data = content if isinstance(content, bytes) else str(content).encode()
        rcpt = re.sub(r"[^A-Za-z0-9@._-]", "_", ",".join(envelope.rcpt_tos))[:100]
        path = self.directory / f"{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**9:09d}-{rcpt}.eml"
        path.write_bytes(data)
        subject = message_from_bytes(data, policy=default).get("Subject", "")
        print(f"mail to {', '.join(envelope.rcpt_tos)}: {subject!r} -> {path}", flush=True)
        return "250 OK"


def latest(directory: Path, to: str | None) -> int:
    """Print the newest caught mail (to `to` when given): its headers and its text."""
    mails = sorted(directory.glob("*.eml"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    for path in mails:
        message = message_from_bytes(path.read_bytes(), policy=default)
        recipients = {address.lower() for _, address in getaddresses([str(message.get("To", ""))])}
        if to and to.lower() not in recipients:
            continue
        for header in ("Date", "From", "To", "Subject"):
            if header in message:
                print(f"{header}: {message[header]}")
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content().replace("\r\n", "\n").rstrip() if body else ""  # SMTP's CRLF
        print(f"File: {path}\n\n{text}")
        return 0
    print(f"no mail{f' to {to}' if to else ''} in {directory}", file=sys.stderr)
    return 1


async def serve(args: argparse.Namespace) -> None:
    from aiosmtpd.controller import Controller

    controller = Controller(FileSink(args.dir), hostname=args.host, port=args.port)
    controller.start()
    print(f"mail sink on {args.host}:{args.port}, writing mails to {args.dir}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        controller.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("MAIL_SINK_PORT", "1025")))
    parser.add_argument("--dir", type=Path, default=STATE / "mail")
    parser.add_argument("--latest", action="store_true", help="print the latest caught mail and exit")
    parser.add_argument("--to", help="with --latest: the latest mail to this address")
    args = parser.parse_args()
    if args.latest:
        return latest(args.dir, args.to)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
