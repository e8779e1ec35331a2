"""Least privilege in Redis: compose's ACL file (deploy/credentials.py) on a private redis-server. Auth's user
runs everything auth does (throttles, email codes, the deny list) on its own prefix and nothing beyond it;
console's and indexer's users read the deny list and cannot write or delete a key of it, nor read auth's
other keys; a connection that has not authenticated may only PING (the healthcheck)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis as sync_redis
from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from auth.email_login.codes import CodeStore
from auth.throttle import Limit, Throttle
from deploy.credentials import redis_acl
from servicekit.auth import AuthSettings, RevocationList, TokenVerifier
from testsupport import free_port

PREFIX = "auth:"
PASSWORDS = {user: f"{user}-{uuid.uuid4().hex}" for user in ("auth", "console", "indexer")}


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (Debian: redis-server)")
    directory = tmp_path_factory.mktemp("redis-acl")
    (directory / "users.acl").write_text(redis_acl(PASSWORDS, PREFIX))
    port = free_port()
    (directory / "redis.conf").write_text(
        f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {directory}\n'
        f"aclfile {directory / 'users.acl'}\n"
    )
    proc = subprocess.Popen([binary, str(directory / "redis.conf")], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if sync_redis.Redis(host="127.0.0.1", port=port).ping():
                    break
            except sync_redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def url(port: int, user: str) -> str:
    return f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{port}/0"


@pytest.fixture
async def clients(redis_port: int) -> AsyncIterator[dict[str, Redis]]:
    made = {user: Redis.from_url(url(redis_port, user)) for user in PASSWORDS}
    yield made
    for client in made.values():
        await client.aclose()


async def test_auth_runs_its_throttles_codes_and_deny_list_on_its_own_prefix(
    clients: dict[str, Redis],
) -> None:
    auth = clients["auth"]
    throttle = Throttle(auth, PREFIX)
    key = throttle.key("login", "someone@example.com")
    await throttle.reserve([Limit(key, 5)], window_seconds=60, message="slow down")
    assert await throttle.count(key) == 1
    await throttle.release(key)
    await throttle.clear(key)

    codes = CodeStore(auth, PREFIX)
    account = uuid.uuid4()
    await codes.issue(account, "token-1", b"digest", now_ms=int(time.time() * 1000), ttl_ms=60_000, cap=3)
    candidate = await codes.guess("token-1", max_guesses=3)
    assert candidate is not None and candidate.account_id == account
    assert await codes.spend(candidate)
    await codes.issue(account, "token-2", b"digest", now_ms=int(time.time() * 1000), ttl_ms=60_000, cap=3)
    assert await codes.cancel_all(account) == 1

    revocations = RevocationList(auth, PREFIX)
    await revocations.revoke_token("jti-1", 60)
    await revocations.revoke_sessions(["sid-1"], 60)
    assert await revocations.is_revoked("jti-1", None) and await revocations.is_revoked("other", "sid-1")

    # Nothing outside its prefix, and none of the server-wide commands.
    with pytest.raises(NoPermissionError):
        await auth.set("elsewhere:key", b"1")
    for command in (("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("ACL", "LIST")):
        with pytest.raises(NoPermissionError):
            await auth.execute_command(*command)


@pytest.mark.parametrize("verifier", ["console", "indexer"])
async def test_a_verifier_reads_the_deny_list_and_cannot_change_it(
    clients: dict[str, Redis], verifier: str, redis_port: int
) -> None:
    await RevocationList(clients["auth"], PREFIX).revoke_token(f"revoked-by-auth-{verifier}", 60)
    reader = RevocationList(clients[verifier], PREFIX)
    assert await reader.is_revoked(f"revoked-by-auth-{verifier}", "some-session")
    assert not await reader.is_revoked("never-revoked", None)

    deny_key = reader.token_key(f"revoked-by-auth-{verifier}")
    with pytest.raises(NoPermissionError):
        await clients[verifier].delete(deny_key)  # un-revoking a token
    with pytest.raises(NoPermissionError):
        await clients[verifier].set(reader.token_key("forged"), b"1")
    with pytest.raises(NoPermissionError):
        await clients[verifier].expire(deny_key, 1)
    with pytest.raises(NoPermissionError):
        await clients[verifier].mget([f"{PREFIX}throttle:login:x"])  # auth's other keys: not even read
    assert await clients["auth"].exists(deny_key) == 1

    # The verifier as the services build it: URL naming the user, the password apart (a file in compose).
    settings = AuthSettings(
        redis_url=f"redis://{verifier}@127.0.0.1:{redis_port}/0",
        redis_password=PASSWORDS[verifier],
        redis_prefix=PREFIX,
    )
    async with TokenVerifier.from_settings(settings) as token_verifier:
        assert await token_verifier.revocations.redis.ping()
        assert await token_verifier.revocations.is_revoked(f"revoked-by-auth-{verifier}", None)


async def test_without_authenticating_only_ping_answers(redis_port: int) -> None:
    anonymous = Redis(host="127.0.0.1", port=redis_port)
    try:
        assert await anonymous.ping()
        with pytest.raises(NoPermissionError):
            await anonymous.get(f"{PREFIX}revoked:jti:x")
    finally:
        await anonymous.aclose()
    wrong = Redis.from_url(f"redis://console:wrong@127.0.0.1:{redis_port}/0")
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            await wrong.ping()
    finally:
        await wrong.aclose()


def test_the_acl_file_holds_digests_not_passwords() -> None:
    text = redis_acl(PASSWORDS, PREFIX)
    assert not [p for p in PASSWORDS.values() if p in text]
    assert "%R~auth:revoked:*" in text and "~auth:*" in text
