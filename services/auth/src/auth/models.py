"""Tables of the auth database. All SQL lives in the feature repositories; these are only the mappings."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, Text, text
from sqlalchemy.dialects.postgresql import JSONB, TIMESTAMP
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

Timestamp = TIMESTAMP(timezone=True)


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(Text, unique=True)  # normalised: stripped, lower-case
    name: Mapped[str] = mapped_column(Text)
    password_hash: Mapped[str] = mapped_column(Text)
    # Aggregate version carried by events; consumers drop stale ones.
    version: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class LoginSession(Base):
    """A refresh-token family: one login. Revoking it ends every token descended from that login."""

    __tablename__ = "login_sessions"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    revoke_reason: Mapped[str | None] = mapped_column(Text)


class RefreshToken(Base):
    """Opaque refresh tokens, stored as SHA-256 digests (they are 256-bit random: no slow hash needed)."""

    __tablename__ = "refresh_tokens"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("login_sessions.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    # Set when rotated: presenting it again is reuse and revokes the family.
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)


class SigningKey(Base):
    """Ed25519 signing keys. The private key is AES-GCM encrypted under AUTH_KEY_ENCRYPTION_KEY."""

    __tablename__ = "signing_keys"
    __table_args__ = (
        # At most one active (signing) key, even with several auth processes starting at once.
        Index(
            "uq_signing_keys_active", text("(true)"), unique=True, postgresql_where=text("retired_at IS NULL")
        ),
    )

    kid: Mapped[str] = mapped_column(Text, primary_key=True)
    algorithm: Mapped[str] = mapped_column(Text)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSONB)
    private_key_ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    retired_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # A retired key stays in the JWKS until every token it signed has expired.
    publish_until: Mapped[datetime | None] = mapped_column(Timestamp)


class PasswordReset(Base):
    __tablename__ = "password_resets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    account_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[bytes] = mapped_column(LargeBinary)  # HMAC-SHA256, keyed from the key-encryption key
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    attempts: Mapped[int]
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    invalidated_at: Mapped[datetime | None] = mapped_column(Timestamp)
