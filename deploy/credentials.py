"""Compose's secrets: the files `deploy/compose.yml` mounts (`secrets:`), the Redis ACL users they imply, and
the check that no secret is left in the compose files themselves (`make compose-check`).

    python deploy/credentials.py [--dir deploy/secrets]   # create the missing ones (make compose-secrets)
    python deploy/credentials.py --check                  # exit 1 naming any missing (make compose-up)

Each secret is one file in a 0700 directory (deploy/secrets/, never committed); the files are 0644 because a
Compose secret outside Swarm is a bind mount with the host file's mode, and the containers' users (postgres,
redis, the app's uid 10001) are not the host's. `redis-users.acl` is derived from the three Redis passwords
(SHA-256 digests, no password in it) and rewritten on every run.

Kafka (deploy/kafka_acls.py): a SCRAM password per principal and the admin's, and TLS: a CA (`kafka-ca.pem`,
what clients trust; its key `kafka-ca.key` is mounted nowhere) and the brokers' certificate, CN=kafka-broker
for the names kafka, kafka-2, kafka-3 and localhost, server and client use (the brokers authenticate each
other with it), in a PKCS12 keystore (`kafka-broker.p12`) under `kafka_keystore_password`. A new CA reissues
the keystore; delete `kafka-ca.*` to rotate both, `kafka-broker.p12` to reissue the brokers' certificate.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import secrets
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

try:  # as a script (deploy/ on sys.path) or as deploy.credentials (the tests)
    from kafka_acls import ADMIN, PRINCIPALS, password_secret
except ImportError:
    from deploy.kafka_acls import ADMIN, PRINCIPALS, password_secret

DEFAULT_DIR = Path(__file__).resolve().parent / "secrets"
SERVICES = ("auth", "console", "indexer")
PASSWORDS = (
    "auth_key_encryption_key",
    *(f"{s}_db_{who}_password" for s in SERVICES for who in ("admin", "owner", "app")),
    *(f"redis_{s}_password" for s in SERVICES),
    *(password_secret(p) for p in (ADMIN, *PRINCIPALS)),
    "kafka_keystore_password",
    # The mail sender's SMTP password: a random placeholder until you write the SMTP server's own there.
    "mailer_smtp_password",
)
REDIS_ACL = "redis-users.acl"
KAFKA_CA, KAFKA_CA_KEY, KAFKA_KEYSTORE = "kafka-ca.pem", "kafka-ca.key", "kafka-broker.p12"
KAFKA_BROKER_NAMES = (
    "kafka",
    "kafka-2",
    "kafka-3",
    "localhost",
)  # compose's broker services, the healthcheck
FILES = (*PASSWORDS, REDIS_ACL, KAFKA_CA, KAFKA_CA_KEY, KAFKA_KEYSTORE)

# What each Redis user may run: exactly the commands its code sends (redis-py loads Lua scripts with SCRIPT
# EXISTS/LOAD before EVALSHA; the CLIENT SETINFO it sends on connect may be refused, it ignores that, and
# Redis 7.0 does not know the command, which an ACL naming it would make fatal). Lua scripts' own commands
# are checked against the same rules. The verifiers only MGET the deny list (servicekit.auth.RevocationList)
# and PING it (/readyz).
AUTH_COMMANDS = (
    "+ping +get +set +del +exists +mget +incr +decr +pexpire +pttl +hset +hincrby +hmget "
    "+zadd +zrem +zcard +zrange +zremrangebyscore +zpopmin +multi +exec +discard +eval +evalsha "
    "+script|load +script|exists"
)
VERIFIER_COMMANDS = "+ping +mget"


def redis_acl(passwords: Mapping[str, str], prefix: str = "auth:") -> str:
    """The ACL file: auth reads and writes its own prefix, console and indexer only read the deny list, and
    a connection that has not authenticated (the `default` user: the healthcheck's redis-cli) may only PING."""

    def digest(user: str) -> str:
        return "#" + hashlib.sha256(passwords[user].encode()).hexdigest()

    return "\n".join(
        (
            "user default on nopass resetkeys resetchannels -@all +ping",
            f"user auth on {digest('auth')} resetkeys ~{prefix}* resetchannels -@all {AUTH_COMMANDS}",
            *(
                f"user {v} on {digest(v)} resetkeys %R~{prefix}revoked:* resetchannels -@all {VERIFIER_COMMANDS}"
                for v in ("console", "indexer")
            ),
            "",
        )
    )


def generate(directory: Path, prefix: str = "auth:") -> list[str]:
    """Create every missing secret (random, URL-safe) and rewrite the ACL file; the names it created."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    created = []
    for name in PASSWORDS:
        path = directory / name
        if not path.exists():
            path.write_text(secrets.token_urlsafe(32) + "\n")
            created.append(name)
        path.chmod(0o644)
    passwords = {s: (directory / f"redis_{s}_password").read_text().strip() for s in SERVICES}
    (directory / REDIS_ACL).write_text(redis_acl(passwords, prefix))
    (directory / REDIS_ACL).chmod(0o644)
    created += kafka_tls(directory)
    return created


def kafka_tls(directory: Path) -> list[str]:
    """Create the Kafka CA and the brokers' keystore when missing (a new CA reissues the keystore)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def usage(**on: bool) -> x509.KeyUsage:
        names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment")
        names += ("key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
        return x509.KeyUsage(**{n: on.get(n, False) for n in names})

    now = datetime.datetime.now(datetime.UTC)
    created = []
    ca_path, ca_key_path, store_path = (directory / n for n in (KAFKA_CA, KAFKA_CA_KEY, KAFKA_KEYSTORE))
    if not (ca_path.exists() and ca_key_path.exists()):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name("outbox-reference Kafka CA"))
            .issuer_name(name("outbox-reference Kafka CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage(digital_signature=True, key_cert_sign=True, crl_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca_key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        ca_key_path.chmod(0o600)  # the CA's key: mounted nowhere, readable by its owner alone
        ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        ca_path.chmod(0o644)
        store_path.unlink(missing_ok=True)
        created += [KAFKA_CA, KAFKA_CA_KEY]
    if not store_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        eku = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        cert = (
            x509.CertificateBuilder()
            .subject_name(name("kafka-broker"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True, key_agreement=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in KAFKA_BROKER_NAMES]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        password = (directory / "kafka_keystore_password").read_text().strip().encode()
        store_path.write_bytes(
            pkcs12.serialize_key_and_certificates(
                b"kafka-broker", key, cert, [ca], serialization.BestAvailableEncryption(password)
            )
        )
        store_path.chmod(0o644)  # a compose secret: a bind mount read by the broker's user
        created.append(KAFKA_KEYSTORE)
    return created


def missing(directory: Path) -> list[str]:
    return [name for name in FILES if not (directory / name).is_file()]


# --- the check: no secret in a compose file ---------------------------------------------------------------
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY_ENCRYPTION|PRIVATE_KEY|CREDENTIAL|REDISCLI_AUTH", re.I)
INTERPOLATED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)([^}]*)\}")
COMMAND_SECRET = re.compile(r"--(requirepass|masterauth|pass|password)(=|\s|$)|\bAUTH\s+\S")
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@", re.I)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def secret_findings(compose: Mapping[str, Any]) -> list[str]:
    """Every place a compose file (as written, before interpolation) holds a secret other than as a file:
    a secret-named variable with a value (`X_PASSWORD: ...`; only `X_PASSWORD_FILE` may be set), a secret
    interpolated from the environment (`${REDIS_PASSWORD}`, with or without a default), credentials inside a
    URL, a secret on a command line, and a top-level secret that is not a `file:`."""
    found = []
    for name, service in (compose.get("services") or {}).items():
        for var, value in _environment(service).items():
            if SECRET_NAME.search(var) and not var.endswith("_FILE"):
                found.append(f"services.{name}.environment.{var}: a secret as an environment value")
            elif URL_CREDENTIALS.search(value):
                found.append(f"services.{name}.environment.{var}: credentials inside a URL")
        for key in ("command", "entrypoint", "healthcheck"):
            for text in _strings(service.get(key)):
                if COMMAND_SECRET.search(text) or URL_CREDENTIALS.search(text):
                    found.append(f"services.{name}.{key}: a secret on a command line")
    for text in _strings(compose):
        for var, _rest in INTERPOLATED.findall(text):
            if SECRET_NAME.search(var) and not var.endswith(("_FILE", "_DIR")):
                found.append(f"${{{var}}}: a secret interpolated from the environment or a default")
    for name, spec in (compose.get("secrets") or {}).items():
        if not isinstance(spec, Mapping) or set(spec) - {"file", "name"} or "file" not in spec:
            found.append(f"secrets.{name}: not a file (environment or external secrets are not allowed here)")
    return sorted(set(found))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("SECRETS_DIR") or DEFAULT_DIR))
    parser.add_argument("--redis-prefix", default=os.environ.get("AUTH_REDIS_PREFIX", "auth:"))
    parser.add_argument("--check", action="store_true", help="only check that every secret file exists")
    args = parser.parse_args()
    if args.check:
        absent = missing(args.dir)
        if absent:
            print(
                f"[secrets] missing in {args.dir}: {', '.join(absent)} (make compose-secrets)",
                file=sys.stderr,
            )
        return 1 if absent else 0
    created = generate(args.dir, args.redis_prefix)
    print(
        f"[secrets] {args.dir}: created {', '.join(created) or 'nothing (all present)'}; {REDIS_ACL} rewritten"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
