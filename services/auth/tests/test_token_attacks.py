"""Forged and broken tokens are refused with 401 by auth's /me and by a service using servicekit.auth."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from auth_testkit import Forger, Secrets, VerifierApp, new_login

ATTACKS = [
    "alg_none",
    "hs256_signed_with_public_key",
    "wrong_key",
    "expired",
    "wrong_audience",
    "tampered_payload",
    "unknown_kid",
    "wrong_issuer",
    "missing_exp",
    "issued_in_future",
    "lifetime_too_long",
    "not_a_jwt",
]
TARGETS = {"auth_me": "/auth/api/me", "servicekit_dependency": "/whoami"}


def client_for(target: str, http: httpx.AsyncClient, verifier: httpx.AsyncClient) -> httpx.AsyncClient:
    return http if target == "auth_me" else verifier


@pytest.mark.parametrize("target", TARGETS)
async def test_control_token_forged_with_the_real_key_is_accepted(
    target: str, http: httpx.AsyncClient, verifier: httpx.AsyncClient, forger: Forger, seen: Secrets
) -> None:
    """The matrix below means something only if a correctly made token passes the same path."""
    session = await new_login(http, seen)
    token = forger.sign(forger.claims(session.account_id, session.email))
    r = await client_for(target, http, verifier).get(
        TARGETS[target], headers={"Authorization": f"Bearer {token}"}
    )
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("target", TARGETS)
async def test_attack_is_refused_with_401(
    attack: str,
    target: str,
    http: httpx.AsyncClient,
    verifier: httpx.AsyncClient,
    forger: Forger,
    seen: Secrets,
    caplog: pytest.LogCaptureFixture,
) -> None:
    session = await new_login(http, seen)
    token = forger.attacks(session.account_id, session.email)[attack]
    with caplog.at_level(logging.DEBUG):
        r = await client_for(target, http, verifier).get(
            TARGETS[target], headers={"Authorization": f"Bearer {token}"}
        )
    assert r.status_code == 401, (attack, r.text)
    assert r.json()["error"]["code"] == "unauthorized"
    assert token not in r.text and token not in caplog.text


async def test_verifier_does_not_call_auth_per_request(
    http: httpx.AsyncClient, verifier: httpx.AsyncClient, verifier_app: VerifierApp, seen: Secrets
) -> None:
    session = await new_login(http, seen)
    await verifier.get("/whoami", headers=session.bearer)  # warm
    before = verifier_app.jwks.fetches
    for _ in range(25):
        assert (await verifier.get("/whoami", headers=session.bearer)).status_code == 200
    assert verifier_app.jwks.fetches == before


async def test_unknown_kid_flood_refetches_jwks_at_most_once_per_interval(
    http: httpx.AsyncClient,
    verifier: httpx.AsyncClient,
    verifier_app: VerifierApp,
    forger: Forger,
    seen: Secrets,
) -> None:
    session = await new_login(http, seen)
    tokens = [forger.attacks(session.account_id, session.email)["unknown_kid"] for _ in range(20)]
    before = verifier_app.jwks.fetches
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(
        *(verifier.get("/whoami", headers={"Authorization": f"Bearer {t}"}) for t in tokens)
    )
    elapsed = loop.time() - started
    assert all(r.status_code == 401 for r in results)
    # min refetch interval is 1 s in these tests
    assert verifier_app.jwks.fetches - before <= 1 + int(elapsed)
