"""Signing keys: Ed25519, persisted (private half encrypted), rotated with the old public key kept in the JWKS."""
