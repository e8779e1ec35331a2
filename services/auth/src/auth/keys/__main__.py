"""`python -m auth.keys rotate|list`: operate the signing keys of the database in AUTH_DATABASE_URL."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker

from auth.keys import repository
from auth.keys.crypto import KeyCipher
from auth.keys.service import rotate
from auth.settings import Settings
from outbox.telemetry.logs import configure_logging
from servicekit.db import make_engine


async def _run(command: str) -> None:
    settings = Settings()
    engine = make_engine(settings.database_url, pool_size=1)
    try:
        async with async_sessionmaker(engine).begin() as session:
            if command == "rotate":
                cipher = KeyCipher(settings.key_encryption_key.get_secret_value())
                kid = await rotate(session, cipher, grace=settings.retired_key_grace)
                print(f"active signing key: {kid}")
            else:
                for key in await repository.published(session, datetime.now(UTC)):
                    state = "active" if key.retired_at is None else f"published until {key.publish_until}"
                    print(f"{key.kid}  {key.algorithm}  created {key.created_at}  {state}")
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m auth.keys", description=__doc__)
    parser.add_argument("command", choices=["rotate", "list"])
    args = parser.parse_args()
    configure_logging("auth-keys")
    asyncio.run(_run(args.command))


if __name__ == "__main__":
    main()
