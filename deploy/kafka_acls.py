"""Kafka principals, topics and ACLs of deploy/compose.yml: the one source of deploy/kafka/init.sh.

    python deploy/kafka_acls.py > deploy/kafka/init.sh    # regenerate after changing POLICY or TOPICS

The init job (the kafka image, as the super user `admin`) runs init.sh: a SCRAM-SHA-512 credential per
principal from its secret file, the topics, then each `acl` line below as `kafka-acls.sh --add` (LITERAL
names; topics carry OUTBOX_TOPIC_PREFIX, groups do not, as in the library). The broker denies whatever no ACL
allows (`allow.everyone.if.no.acl.found=false`). `make compose-check` and tests/test_compose_kafka.py run
init.sh against stand-in Kafka tools (`applied`) and check the `kafka-acls.sh --add` calls it makes against
POLICY and the invariants in `policy_findings`; `compose_findings` checks the compose files.

Why each grant (Kafka >= 3.0: an idempotent producer needs Write on a topic, not IdempotentWrite):
- relays: Write (+ Describe, for metadata) on their own service's topics only;
- consumers: Read on what they subscribe to and on their group (join, commit), Write on `<group>.dlq`;
- APIs (console, indexer): GET /metrics reports their consumer group's lag: the committed offsets need
  Describe on the group, the probe's fetch highwater (outbox.observe.group_lag) needs Read on the topics;
- mailer (the mail sender, not in this repository): the only reader of `auth.mail` (one-time codes);
- operator (`outbox status`, `outbox dlq list|show`): Describe on every group, Read on the topics except
  `auth.mail` and the mailer's dead letters (Describe only); Read and Write on the `<group>.dlq.acks` marks
  (`outbox dlq redrive|ack|purge` record there what was done). Redrive itself needs Write on the original
  topic: grant it for the occasion.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ADMIN = "admin"  # super.users; used only by the init job
BROKER = "CN=kafka-broker"  # the brokers' certificate subject: inter-broker and controller listeners (mTLS)
RELAYS = {"auth-relay": "auth", "console-relay": "console", "indexer-relay": "indexer"}
CONSUMERS = {"console-consumer": "console", "indexer-consumer": "indexer", "mailer": "auth-mailer"}
# Consumer group -> the topics it subscribes to (services/*/consumer.py; the mailer's: auth.mail).
GROUPS = {
    "console": ("auth.account", "indexer.document"),
    "indexer": ("console.document",),
    "auth-mailer": ("auth.mail",),
}
PRODUCED = {
    "auth": ("auth.account", "auth.mail"),
    "console": ("console.document",),
    "indexer": ("indexer.document",),
}
SECRET_TOPICS = ("auth.mail", "auth-mailer.dlq")  # one-time codes: only the mailer reads them
# `outbox dlq redrive|ack|purge` record what was done with each dead letter on `<group>.dlq.acks`.
MARKS = tuple(f"{g}.dlq.acks" for g in GROUPS)
TOPICS = (*(t for ts in PRODUCED.values() for t in ts), *(f"{g}.dlq" for g in GROUPS), *MARKS)

Grant = tuple[str, str, frozenset[str]]  # (resource type: topic | group, name, operations)


def _policy() -> dict[str, list[Grant]]:
    def g(kind: str, name: str, *ops: str) -> Grant:
        return (kind, name, frozenset(ops))

    policy: dict[str, list[Grant]] = {}
    for principal, service in RELAYS.items():
        policy[principal] = [g("topic", t, "Write", "Describe") for t in PRODUCED[service]]
    for principal, group in CONSUMERS.items():
        policy[principal] = [
            *(g("topic", t, "Read", "Describe") for t in GROUPS[group]),
            g("group", group, "Read"),
            g("topic", f"{group}.dlq", "Write", "Describe"),
        ]
    for principal, group in (("console-api", "console"), ("indexer-api", "indexer")):
        policy[principal] = [
            *(g("topic", t, "Read", "Describe") for t in GROUPS[group]),
            g("group", group, "Describe"),
        ]
    policy["operator"] = [
        *(
            g("topic", t, "Describe") if t in SECRET_TOPICS else g("topic", t, "Read", "Describe")
            for t in TOPICS
            if t not in MARKS
        ),
        *(g("topic", t, "Read", "Write", "Describe") for t in MARKS),
        *(g("group", group, "Describe") for group in GROUPS),
    ]
    return policy


POLICY = _policy()
PRINCIPALS = tuple(POLICY)


def password_secret(principal: str) -> str:
    """The compose secret (a file under deploy/secrets/) holding a principal's SCRAM password."""
    return f"kafka_{principal.replace('-', '_')}_password"


def render() -> str:
    """deploy/kafka/init.sh."""
    users = "\n".join(f"scram {p} {password_secret(p)}" for p in PRINCIPALS)
    topics = "\n".join(f"topic {t}" for t in TOPICS)
    acls = "\n".join(
        f"acl {p} {kind} {name} {' '.join(sorted(ops))}"
        for p, grants in POLICY.items()
        for kind, name, ops in grants
    )
    return INIT_SH.format(users=users, topics=topics, acls=acls)


INIT_SH = """\
#!/usr/bin/env bash
# GENERATED by deploy/kafka_acls.py (python deploy/kafka_acls.py > deploy/kafka/init.sh): edit that file.
# compose.yml's kafka-init job, in the kafka image, as the super user `admin` over SASL_SSL. Idempotent: a
# credential is upserted, a topic created if missing, an ACL added if absent. An ACL removed from
# kafka_acls.py is NOT revoked here: `kafka-acls.sh --remove` it by hand.
# Environment: KAFKA_BOOTSTRAP, TOPIC_PREFIX, PARTITIONS, REPLICATION; secrets in /run/secrets/ (BROKER_BIN
# and BROKER_SECRETS move the tools and the secrets: the tests run this script against stand-in tools).
set -euo pipefail
bin=${{BROKER_BIN:-/opt/kafka/bin}}
secrets=${{BROKER_SECRETS:-/run/secrets}}
umask 077
conf=$(mktemp -d)
trap 'rm -rf "$conf"' EXIT
# The admin's client settings: a file only this process can read (no password on a command line of ours).
{{
  echo "security.protocol=SASL_SSL"
  echo "sasl.mechanism=SCRAM-SHA-512"
  echo "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\\"{admin}\\" password=\\"$(cat "$secrets/kafka_admin_password")\\";"
  echo "ssl.truststore.type=PEM"
  echo "ssl.truststore.location=$secrets/kafka_ca_cert"
}} > "$conf/admin.properties"
kafka() {{ "$bin/$1" --bootstrap-server "$KAFKA_BOOTSTRAP" --command-config "$conf/admin.properties" "${{@:2}}"; }}
# A principal's SCRAM-SHA-512 credential (kafka-configs.sh takes it on its command line: inside this
# container only, for the life of that process).
scram() {{
  kafka kafka-configs.sh --alter --entity-type users --entity-name "$1" \\
    --add-config "SCRAM-SHA-512=[password=$(cat "$secrets/$2")]" >/dev/null
  echo "credential: $1"
}}
topic() {{
  kafka kafka-topics.sh --create --if-not-exists --topic "$TOPIC_PREFIX$1" \\
    --partitions "$PARTITIONS" --replication-factor "$REPLICATION"
}}
# acl PRINCIPAL topic|group NAME OPERATION...: allow, LITERAL name (topics carry the prefix, groups do not).
acl() {{
  local principal=$1 kind=$2 name=$3 ops=()
  shift 3
  for op in "$@"; do ops+=(--operation "$op"); done
  if [ "$kind" = topic ]; then name="$TOPIC_PREFIX$name"; fi
  kafka kafka-acls.sh --add --allow-principal "User:$principal" "${{ops[@]}}" "--$kind" "$name" \\
    --resource-pattern-type literal >/dev/null
  echo "acl: User:$principal $kind $name $*"
}}

{users}

{topics}

{acls}

echo "kafka-init: credentials, topics and ACLs in place"
""".replace("{admin}", ADMIN)


def policy_findings(grants: Mapping[str, Iterable[Grant]]) -> list[str]:
    """What is wrong with a set of grants: anything but POLICY, and, said plainly, the invariants POLICY keeps."""
    problems = []
    grants = {p: list(gs) for p, gs in grants.items()}
    norm = {p: sorted((k, n, tuple(sorted(o))) for k, n, o in gs) for p, gs in grants.items()}
    want = {p: sorted((k, n, tuple(sorted(o))) for k, n, o in gs) for p, gs in POLICY.items()}
    for principal in sorted(set(norm) | set(want)):
        if norm.get(principal) != want.get(principal):
            problems.append(
                f"User:{principal}: grants {norm.get(principal)} instead of {want.get(principal)}"
            )
    own = {p: set(PRODUCED[s]) for p, s in RELAYS.items()}
    for principal, gs in grants.items():
        for kind, name, ops in gs:
            if kind not in ("topic", "group"):
                problems.append(f"User:{principal}: {kind} {name}: only topic and group grants are expected")
            if principal == ADMIN:
                problems.append("User:admin: is a super user; it needs no ACL")
            if kind == "topic" and "Write" in ops:
                allowed = (
                    own.get(principal)
                    or (set(MARKS) if principal == "operator" else set())
                    or {f"{g}.dlq" for g in GROUPS if CONSUMERS.get(principal) == g}
                )
                if name not in allowed:
                    problems.append(f"User:{principal}: writes {name}, not one of its own topics")
            if kind == "topic" and "Read" in ops and name in SECRET_TOPICS and principal != "mailer":
                problems.append(f"User:{principal}: reads {name}, which only the mailer may read")
            if kind == "group" and "Read" in ops and CONSUMERS.get(principal) != name:
                problems.append(f"User:{principal}: joins group {name}, which is not its own")
            if principal in RELAYS and ops - {"Write", "Describe"}:
                problems.append(f"User:{principal}: a relay with {sorted(ops)} on {name}")
            if ops - {"Read", "Write", "Describe"}:
                problems.append(f"User:{principal}: {sorted(ops)} on {name}: more than Read, Write, Describe")
    return problems


# --- what the init job really applies: init.sh run against stand-in Kafka tools ---------------------------
STUB = """#!/usr/bin/env bash
printf '%s\\0' "$(basename "$0")" "$@" >> "$CALLS"; printf '\\n' >> "$CALLS"
"""


def applied(script: Path, prefix: str = "") -> tuple[dict[str, list[Grant]], list[list[str]]]:
    """Run init.sh with stand-ins for kafka-configs/topics/acls.sh that record their arguments; the grants
    its kafka-acls.sh --add calls make (principal -> grants, names without `prefix`) and every call."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        (root / "secrets").mkdir()
        for tool in ("kafka-configs.sh", "kafka-topics.sh", "kafka-acls.sh"):
            (root / "bin" / tool).write_text(STUB)
            (root / "bin" / tool).chmod(0o755)
        for name in ("kafka_ca_cert", *(password_secret(p) for p in (ADMIN, *PRINCIPALS))):
            (root / "secrets" / name).write_text(f"pw-{name}\n")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "CALLS": str(root / "calls"),
            "BROKER_BIN": str(root / "bin"),
            "BROKER_SECRETS": str(root / "secrets"),
            "KAFKA_BOOTSTRAP": "kafka:9093",
            "TOPIC_PREFIX": prefix,
            "PARTITIONS": "6",
            "REPLICATION": "1",
        }
        run = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"{script} failed ({run.returncode}): {run.stderr.strip()}")
        calls = [line.split("\0") for line in (root / "calls").read_text().split("\0\n") if line]
    grants: dict[str, list[Grant]] = {}
    for call in calls:
        if call[0] != "kafka-acls.sh" or "--add" not in call:
            continue
        ops = frozenset(call[i + 1] for i, a in enumerate(call) if a == "--operation")
        principal = call[call.index("--allow-principal") + 1].removeprefix("User:")
        kind = "topic" if "--topic" in call else "group"
        name = call[call.index(f"--{kind}") + 1]
        if kind == "topic":
            name = name.removeprefix(prefix)
        assert call[call.index("--resource-pattern-type") + 1] == "literal", call
        grants.setdefault(principal, []).append((kind, name, ops))
    return grants, calls


# --- the compose files: every Kafka client on SASL_SSL as its own principal, every broker locked down -------
BROKER_SCRIPT = "/opt/outbox/kafka/broker.sh"
INIT_SCRIPT = "/opt/outbox/kafka/init.sh"
CLIENT_PORT = "9093"
BROKER_SECRETS = {"kafka_keystore", "kafka_keystore_password", "kafka_ca_cert", "kafka_admin_password"}
BROKER_SETTINGS = {
    "KAFKA_AUTHORIZER_CLASS_NAME": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    "KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND": "false",
    "KAFKA_SUPER_USERS": f"User:{ADMIN};User:{BROKER}",
    "KAFKA_SASL_ENABLED_MECHANISMS": "SCRAM-SHA-512",
    "KAFKA_INTER_BROKER_LISTENER_NAME": "SSL",
    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:SSL",
    "KAFKA_LISTENER_NAME_SSL_SSL_CLIENT_AUTH": "required",
    "KAFKA_LISTENER_NAME_CONTROLLER_SSL_CLIENT_AUTH": "required",
}
_DEFAULT = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}")


def with_defaults(value: Any) -> Any:
    """A compose file's values with every `${VAR:-default}` replaced by its default (nothing set)."""
    if isinstance(value, str):
        return _DEFAULT.sub(lambda m: m.group(1) or "", value)
    if isinstance(value, Mapping):
        return {k: with_defaults(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_defaults(v) for v in value]
    return value


def merge(base: Mapping[str, Any], *overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Compose's merge, as far as these checks need: per service, `environment` and `depends_on` merge key
    by key, `secrets` and `volumes` add up, anything else is replaced."""
    out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    out["services"] = {n: dict(s) for n, s in base.get("services", {}).items()}
    for override in overrides:
        for name, svc in (override.get("services") or {}).items():
            merged = out["services"].setdefault(name, {})
            for key, value in svc.items():
                if key in ("environment", "depends_on"):
                    merged[key] = {**(merged.get(key) or {}), **(value or {})}
                elif key in ("secrets", "volumes"):
                    merged[key] = [
                        *(merged.get(key) or []),
                        *(x for x in value if x not in (merged.get(key) or [])),
                    ]
                else:
                    merged[key] = value
        for key in ("secrets", "volumes"):
            out[key] = {**(out.get(key) or {}), **(override.get(key) or {})}
    return with_defaults(out)


def _env(svc: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): "" if v is None else str(v) for k, v in (svc.get("environment") or {}).items()}


def _secrets(svc: Mapping[str, Any]) -> set[str]:
    """A service's secrets, short (`name`) or long syntax (`{source: name}`, as `compose config` prints)."""
    return {x if isinstance(x, str) else str(x.get("source")) for x in svc.get("secrets") or []}


def _runs(svc: Mapping[str, Any], script: str) -> bool:
    return script in [str(x) for x in (svc.get("command") or [])]


def compose_findings(config: Mapping[str, Any], *, plaintext_allowed: bool = False) -> list[str]:
    """What is wrong with a (merged) compose configuration's Kafka security. `plaintext_allowed`: the local
    stand-in (compose.local.yml), whose broker cannot do TLS or SASL: its clients must then be PLAINTEXT
    without credentials, said explicitly."""
    found: list[str] = []
    services: Mapping[str, Any] = config.get("services") or {}
    secrets = config.get("secrets") or {}
    brokers = sorted(n for n, s in services.items() if _runs(s, BROKER_SCRIPT))
    if not plaintext_allowed:
        if not brokers:
            found.append("no service runs deploy/kafka/broker.sh")
        for name in brokers:
            env = _env(services[name])
            for var, want in BROKER_SETTINGS.items():
                if env.get(var) != want:
                    found.append(f"{name}: {var}={env.get(var)!r}, not {want!r}")
            listeners = {x.split("://")[0] for x in env.get("KAFKA_LISTENERS", "").split(",")}
            if listeners != {"SASL_SSL", "SSL", "CONTROLLER"}:
                found.append(f"{name}: listeners {sorted(listeners)}, not SASL_SSL, SSL and CONTROLLER")
            advertised = env.get("KAFKA_ADVERTISED_LISTENERS", "")
            if f"SASL_SSL://{name}:{CLIENT_PORT}" not in advertised.split(","):
                found.append(f"{name}: does not advertise SASL_SSL://{name}:{CLIENT_PORT}")
            if missing := BROKER_SECRETS - _secrets(services[name]):
                found.append(f"{name}: secrets {sorted(missing)} not mounted")
    clients = sorted(
        n
        for n, s in services.items()
        if "KAFKA_BOOTSTRAP" in _env(s) and n not in brokers and not _runs(s, INIT_SCRIPT)
    )
    users: dict[str, str] = {}
    for name in clients:
        svc, env = services[name], _env(services[name])
        mounted = _secrets(svc)
        protocol = env.get("KAFKA_SECURITY_PROTOCOL", "") or "PLAINTEXT"
        if plaintext_allowed:
            creds = [
                v
                for v in (
                    "KAFKA_SASL_MECHANISM",
                    "KAFKA_SASL_USERNAME",
                    "KAFKA_SASL_PASSWORD_FILE",
                    "KAFKA_SSL_CAFILE",
                )
                if env.get(v)
            ]
            if protocol != "PLAINTEXT" or creds:
                found.append(f"{name}: the stand-in broker is PLAINTEXT only, but {protocol} {creds}")
            continue
        if protocol != "SASL_SSL":
            found.append(f"{name}: KAFKA_SECURITY_PROTOCOL={protocol}, not SASL_SSL")
        if env.get("KAFKA_SASL_MECHANISM") != "SCRAM-SHA-512":
            found.append(
                f"{name}: KAFKA_SASL_MECHANISM={env.get('KAFKA_SASL_MECHANISM')!r}, not SCRAM-SHA-512"
            )
        user = env.get("KAFKA_SASL_USERNAME", "")
        if user not in POLICY:
            found.append(f"{name}: KAFKA_SASL_USERNAME={user!r} is not a principal of kafka_acls.py")
        elif user in users:
            found.append(f"{name}: shares principal {user} with {users[user]}")
        users.setdefault(user, name)
        secret = password_secret(user)
        if env.get("KAFKA_SASL_PASSWORD_FILE") != f"/run/secrets/{secret}" or secret not in mounted:
            found.append(f"{name}: KAFKA_SASL_PASSWORD_FILE is not its mounted secret /run/secrets/{secret}")
        if others := sorted(mounted & {password_secret(p) for p in (ADMIN, *PRINCIPALS)} - {secret}):
            found.append(f"{name}: mounts other principals' passwords {others}")
        if "KAFKA_SASL_PASSWORD" in env:
            found.append(f"{name}: KAFKA_SASL_PASSWORD as a value")
        if env.get("KAFKA_SSL_CAFILE") != "/run/secrets/kafka_ca_cert" or "kafka_ca_cert" not in mounted:
            found.append(f"{name}: KAFKA_SSL_CAFILE is not the mounted compose CA")
        if env.get("KAFKA_SSL_CHECK_HOSTNAME", "true").lower() not in ("true", "1", "yes", "on"):
            found.append(f"{name}: KAFKA_SSL_CHECK_HOSTNAME is off")
        found += _bootstrap_findings(name, env.get("KAFKA_BOOTSTRAP", ""), brokers)
    inits = [n for n, s in services.items() if _runs(s, INIT_SCRIPT)]
    if not plaintext_allowed:
        if inits != ["kafka-init"]:
            found.append(f"the init job (deploy/kafka/init.sh) runs in {inits}, not kafka-init alone")
        for name in inits:
            want = {"kafka_ca_cert", *(password_secret(p) for p in (ADMIN, *PRINCIPALS))}
            if missing := want - _secrets(services[name]):
                found.append(f"{name}: secrets {sorted(missing)} not mounted")
            found += _bootstrap_findings(name, _env(services[name]).get("KAFKA_BOOTSTRAP", ""), brokers)
        admin_users = [n for n, s in services.items() if password_secret(ADMIN) in _secrets(s)]
        if set(admin_users) - {*brokers, *inits}:
            found.append(
                f"the admin's password is mounted into {sorted(set(admin_users) - {*brokers, *inits})}"
            )
    if "kafka-init" in services and _env(services["kafka-init"]).get("TOPICS", "").split() != list(TOPICS):
        found.append("kafka-init: TOPICS differs from kafka_acls.TOPICS")
    for name in ("kafka_ca_cert", *(password_secret(p) for p in (ADMIN, *PRINCIPALS))):
        if not isinstance(secrets.get(name), Mapping) or "file" not in secrets[name]:
            found.append(f"secrets.{name}: not a file")
    return found


def _bootstrap_findings(name: str, bootstrap: str, brokers: list[str]) -> list[str]:
    hosts = [x.strip() for x in bootstrap.split(",") if x.strip()]
    found = [
        f"{name}: bootstrap {h} is not a broker's SASL_SSL listener"
        for h in hosts
        if h.rpartition(":")[0] not in brokers or h.rpartition(":")[2] != CLIENT_PORT
    ]
    if missing := set(brokers) - {h.rpartition(":")[0] for h in hosts}:
        found.append(f"{name}: bootstrap {bootstrap!r} leaves out {sorted(missing)}")
    return found


if __name__ == "__main__":
    sys.stdout.write(render())
