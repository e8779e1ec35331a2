"""Settings from the environment (prefix AUTH_).

Production is the default: a missing, default or short AUTH_KEY_ENCRYPTION_KEY stops the service at start-up.
Only an explicit AUTH_ENVIRONMENT=local (which `make run` sets, with a key it generates) tolerates one.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from servicekit.settings import DatabaseUrlSettings, RedisUrlSettings, local_database_url

log = logging.getLogger("auth.settings")

DEFAULT_SECRET = "changethis"
_OBVIOUS_SECRETS = {DEFAULT_SECRET, "secret", "changeme", "password", "test", ""}
MIN_SECRET_LENGTH = 32


class DatabaseSettings(DatabaseUrlSettings):
    """The database alone (`python -m auth.keys`); AUTH_DATABASE_URL / _PASSWORD, each also as `_FILE`."""

    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore")

    database_url: str = Field(default_factory=lambda: local_database_url("auth"))


class Settings(DatabaseSettings, RedisUrlSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore")  # the bases' configs would merge
    # Each may also come from a file, AUTH_<NAME>_FILE (servicekit.secrets); AUTH_REDIS_URL names auth's Redis
    # user, AUTH_REDIS_PASSWORD is that user's password.
    secret_fields: ClassVar[tuple[str, ...]] = (
        *DatabaseSettings.secret_fields,
        *RedisUrlSettings.secret_fields,
        "key_encryption_key",
    )
    environment: Literal["local", "test", "production"] = "production"
    host: str = "127.0.0.1"
    port: int = 8001
    log_level: str = "INFO"
    # Every Redis key auth writes starts with this (the verifiers in other services read the same prefix).
    redis_prefix: str = "auth:"
    max_body_bytes: int = 64 * 1024

    jwt_issuer: str = "auth"
    jwt_audience: str = "outbox-reference"
    access_token_ttl_seconds: int = Field(default=300, ge=30, le=3600)
    refresh_token_ttl_seconds: int = Field(default=14 * 24 * 3600, ge=60)
    clock_leeway_seconds: int = Field(default=10, ge=0, le=120)
    # Encrypts signing private keys at rest and keys the reset-code HMAC. High entropy, never logged.
    key_encryption_key: SecretStr = SecretStr(DEFAULT_SECRET)
    # How long a process trusts its in-memory keyring before rereading signing keys from the database.
    key_cache_seconds: float = Field(default=30.0, gt=0)

    # Login attempts are counted per (account, address), so a stranger's guesses lock only the stranger out;
    # an account-wide ceiling bounds guessing from many addresses, and its lockout lasts one window at most.
    login_window_seconds: float = Field(default=300.0, gt=0)
    login_max_failures: int = Field(default=5, ge=1)
    login_max_failures_per_account: int = Field(default=100, ge=1)
    login_max_failures_per_address: int = Field(default=50, ge=1)

    register_window_seconds: float = Field(default=900.0, gt=0)
    register_max_per_address: int = Field(default=10, ge=1)

    reset_code_ttl_seconds: int = Field(default=900, ge=60)
    # Wrong codes per (account, address); an account-wide ceiling then cancels the open codes.
    reset_max_attempts: int = Field(default=5, ge=1)
    reset_max_attempts_per_account: int = Field(default=20, ge=1)
    reset_window_seconds: float = Field(default=900.0, gt=0)
    reset_max_requests: int = Field(default=3, ge=1)
    reset_max_requests_per_address: int = Field(default=10, ge=1)
    # Dify's email-code login: 6-digit codes bound to the token their request returned, hashed in Redis,
    # single use, each with its own lifetime. The chance that guessing takes an account in a day is at most
    # requests per day x guesses per code / 10^6 (defaults: 24 x 5 x 3 / 10^6 = 0.036%; README).
    email_code_ttl_seconds: int = Field(default=300, ge=2, le=3600)
    email_code_request_window_seconds: int = Field(default=3600, ge=60)
    email_code_max_requests: int = Field(default=5, ge=1)  # per email per window: also the mail bound
    email_code_max_requests_per_address: int = Field(default=10, ge=1)
    email_code_max_guesses: int = Field(default=3, ge=1, le=10)  # per code
    email_code_max_open: int = Field(default=3, ge=1)  # per account; a request beyond it cancels the oldest
    # Wrong codes per (email, address) per code lifetime.
    email_code_max_attempts: int = Field(default=5, ge=1)
    # Mail events (they carry one-time codes) lose the code this often once published or dead (never pending).
    mail_scrub_interval_seconds: float = Field(default=30.0, gt=0)

    # Refresh: a session lives at most this long however often it is refreshed; a refresh token used twice
    # within the grace (two tabs racing) is refused without revoking the session.
    session_absolute_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=60)
    refresh_reuse_grace_seconds: float = Field(default=10.0, ge=0)

    # Argon2id cost (argon2-cffi defaults: RFC 9106 low-memory profile) and how many hashes run at once.
    argon2_time_cost: int = 3
    argon2_memory_cost_kib: int = 65536
    argon2_parallelism: int = 4
    hash_concurrency: int = Field(default=4, ge=1)
    # Requests waiting for a hash slot beyond this answer 503 at once: a flood cannot queue without bound.
    hash_queue_limit: int = Field(default=32, ge=1)
    redis_timeout_seconds: float = Field(default=2.0, gt=0)

    @property
    def retired_key_grace(self) -> timedelta:
        """How long a retired key stays published: its last token's lifetime plus other processes' caches."""
        return timedelta(
            seconds=self.access_token_ttl_seconds + self.key_cache_seconds + self.clock_leeway_seconds
        )

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        secret = self.key_encryption_key.get_secret_value()
        weak = secret.strip().lower() in _OBVIOUS_SECRETS or len(secret) < MIN_SECRET_LENGTH
        if weak:
            if self.environment != "local":
                raise ValueError(
                    f"AUTH_KEY_ENCRYPTION_KEY is missing, a default or shorter than {MIN_SECRET_LENGTH} characters "
                    f"(AUTH_ENVIRONMENT={self.environment}); set a random value (e.g. `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'`), or AUTH_ENVIRONMENT=local for a throwaway local run"
                )
            log.warning("AUTH_KEY_ENCRYPTION_KEY is a default value: acceptable for local runs only")
        return self
