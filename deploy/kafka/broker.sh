#!/usr/bin/env bash
# compose's Kafka node (apache/kafka image, deploy/compose.yml): renders server.properties from the KAFKA_*
# variables the way the image's own entrypoint does (KAFKA_FOO_BAR -> foo.bar, `__` -> `_`, `___` -> `-`),
# adds the keystore password from its secret file (never an environment value), formats the log directory
# once with the super user's SCRAM credential (`admin`: no client could authenticate to create it
# otherwise) and starts the node. Also writes the client settings of the healthcheck (the inter-broker
# listener, with the brokers' own certificate). BROKER_BIN, BROKER_SECRETS and BROKER_CONF
# exist for tests/test_compose_kafka.py, which runs this script against stand-in tools.
set -euo pipefail
bin=${BROKER_BIN:-/opt/kafka/bin}
secrets=${BROKER_SECRETS:-/run/secrets}
conf=${BROKER_CONF:-/tmp/kafka}
umask 077
mkdir -p "$conf"

# Variables of the launch scripts (JVM options, logging), not broker properties.
is_property() {
  case $1 in
    KAFKA_OPTS | KAFKA_*_OPTS | KAFKA_VERSION | KAFKA_HOME | KAFKA_DEBUG | KAFKA_LOG4J_* | KAFKA_TOOLS_* | KAFKA_JMX_* | KAFKA_GC_*) return 1 ;;
    KAFKA_*) return 0 ;;
    *) return 1 ;;
  esac
}

property_name() {
  local name=${1#KAFKA_}
  name=${name,,}
  name=${name//___/-}
  name=${name//__/$'\x01'}
  name=${name//_/.}
  printf '%s' "${name//$'\x01'/_}"
}

keystore_password=$(cat "$secrets/kafka_keystore_password")
{
  for var in $(compgen -e | sort); do
    if is_property "$var"; then printf '%s=%s\n' "$(property_name "$var")" "${!var}"; fi
  done
  printf 'ssl.keystore.password=%s\nssl.key.password=%s\n' "$keystore_password" "$keystore_password"
} >"$conf/server.properties"

{
  echo "security.protocol=SSL"
  echo "ssl.keystore.type=PKCS12"
  echo "ssl.keystore.location=$secrets/kafka_keystore"
  printf 'ssl.keystore.password=%s\nssl.key.password=%s\n' "$keystore_password" "$keystore_password"
  echo "ssl.truststore.type=PEM"
  echo "ssl.truststore.location=$secrets/kafka_ca_cert"
} >"$conf/internal-client.properties"

# kafka-storage.sh takes the credential on its command line: inside this container, for that process only.
"$bin/kafka-storage.sh" format --ignore-formatted --cluster-id "$CLUSTER_ID" --config "$conf/server.properties" \
  --add-scram "SCRAM-SHA-512=[name=admin,password=$(cat "$secrets/kafka_admin_password")]"
exec "$bin/kafka-server-start.sh" "$conf/server.properties"
