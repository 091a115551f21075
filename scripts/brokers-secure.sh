# shellcheck shell=bash
# The "secure" profile of scripts/brokers.sh: the same four brokers with TLS and authentication,
# for tests/security. Sourced by brokers.sh (`brokers.sh --profile secure up`); it replaces the
# start/ready/stop functions of each broker and adds the preparation step.
#
#   kafka     SASL_SSL listener 127.0.0.1:27092 (SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN),
#             controller 127.0.0.1:27093 (plaintext, loopback only)
#   rabbitmq  node secure@localhost, amqps only on 127.0.0.1:27671; user "dispytch" with access to
#             vhost "tenant-a" only (vhost "tenant-b" exists, no guest user)
#   redis     TLS only on 127.0.0.1:27379; ACL user "dispytch", the default user is off
#   nats      TLS + users (user/password) with JetStream on 127.0.0.1:27422, and
#             TLS + a token with JetStream on 127.0.0.1:27423
#
# Prepared at the first `up` (kept until `clean`): a private CA, a server certificate for
# localhost/127.0.0.1, a client certificate, a second CA nobody trusts, and random passwords.
# Everything the tests need is written to $RUN_ROOT/profile.json (paths, ports, credentials).

TLS_DIR="$RUN_ROOT/tls"
CRED_FILE="$RUN_ROOT/credentials.env"
PROFILE_JSON="$RUN_ROOT/profile.json"
SECURE_USER=dispytch
RMQ_VHOST=tenant-a
RMQ_OTHER_VHOST=tenant-b

ALL_BROKERS=(kafka rabbitmq redis nats)

# ------------------------------------------------------------------------------------ preparation
secure_certs() {
  [ -s "$TLS_DIR/server.pem" ] && [ -s "$TLS_DIR/client.pem" ] && [ -s "$TLS_DIR/other-ca.pem" ] && return 0
  local d="$TLS_DIR" t0
  t0="$(now)"
  rm -rf "$d" && mkdir -p "$d"
  (
    cd "$d"
    ossl() { openssl "$@" >/dev/null 2>&1 || { echo "openssl $1 failed" >&2; openssl "$@" >&2; exit 1; }; }
    # A private CA, and another one that signs nothing we use (a client trusting only it must fail).
    for ca in ca other-ca; do
      ossl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=dispytch test $ca" \
        -keyout "$ca.key" -out "$ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    done
    # Server: localhost and 127.0.0.1, so clients verify the host name. Client: for mutual TLS.
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' >server.ext
    printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n' >client.ext
    for who in server client; do
      ossl req -newkey rsa:2048 -nodes -subj "/CN=dispytch-$who" -keyout "$who.key" -out "$who.csr"
      ossl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$who.ext" -out "$who.pem"
    done
    # Kafka reads one PEM file holding the key and its certificate.
    cat server.key server.pem >server-bundle.pem
    rm -f ./*.csr ./*.srl ./*.ext
  )
  # RabbitMQ runs as the rabbitmq user and must read its key.
  chmod 755 "$d"
  chmod 644 "$d"/*.pem
  chmod 640 "$d"/*.key
  chgrp rabbitmq "$d/server.key" 2>/dev/null || chmod 644 "$d/server.key"
  log "secure: certificates generated in $(elapsed "$t0")s ($d)"
}

random_secret() { openssl rand -hex 16; }

secure_credentials() {
  if [ ! -s "$CRED_FILE" ]; then
    umask 077
    {
      echo "SECURE_PASSWORD=pw-$(random_secret)"
      echo "SECURE_NATS_TOKEN=tok-$(random_secret)"
      echo "SECURE_ADMIN_PASSWORD=adm-$(random_secret)"
    } >"$CRED_FILE"
    umask 022
  fi
  # shellcheck disable=SC1090
  . "$CRED_FILE"
}

secure_profile_json() {
  python3 - "$PROFILE_JSON" <<EOF
import json, sys
profile = {
    "tls": {
        "ca": "$TLS_DIR/ca.pem", "other_ca": "$TLS_DIR/other-ca.pem",
        "client_cert": "$TLS_DIR/client.pem", "client_key": "$TLS_DIR/client.key",
    },
    "user": "$SECURE_USER", "password": "$SECURE_PASSWORD", "token": "$SECURE_NATS_TOKEN",
    "kafka": {"port": $KAFKA_PORT, "mechanisms": ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]},
    "rabbitmq": {"port": $RABBITMQ_PORT, "vhost": "$RMQ_VHOST", "other_vhost": "$RMQ_OTHER_VHOST"},
    "redis": {"port": $REDIS_PORT},
    "nats": {"port": $NATS_PORT},
    "nats_token": {"port": $NATS_TOKEN_PORT},
}
with open(sys.argv[1], "w") as f:
    json.dump(profile, f, indent=2)
EOF
  chmod 600 "$PROFILE_JSON"
}

prepare_profile() {
  secure_certs
  secure_credentials
  secure_profile_json
}

# Children (`brokers.sh _start NAME`) read what `up` prepared.
if [ -s "$CRED_FILE" ]; then
  # shellcheck disable=SC1090
  . "$CRED_FILE"
fi

port_of() {
  case "$1" in
    kafka) echo "$KAFKA_PORT" ;; rabbitmq) echo "$RABBITMQ_PORT" ;;
    redis) echo "$REDIS_PORT" ;; nats) echo "$NATS_PORT" ;;
  esac
}

# ------------------------------------------------------------------------------------------ kafka
kafka_write_config() {
  local run="$1" quorum jaas
  if [ "$(kafka_major)" = 3 ]; then
    quorum="controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT"
  else
    quorum="controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1"
  fi
  jaas="org.apache.kafka.common.security.plain.PlainLoginModule required username=\"admin\" password=\"$SECURE_ADMIN_PASSWORD\" user_admin=\"$SECURE_ADMIN_PASSWORD\" user_$SECURE_USER=\"$SECURE_PASSWORD\";"
  umask 077
  cat >"$run/server.properties" <<EOF
# generated by scripts/brokers.sh --profile secure
process.roles=broker,controller
node.id=1
$quorum
listeners=SASL_SSL://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=SASL_SSL://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
inter.broker.listener.name=SASL_SSL
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_ssl.plain.sasl.jaas.config=$jaas
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$TLS_DIR/server-bundle.pem
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
ssl.client.auth=none
$(kafka_common_properties "$run")
EOF
  umask 022
  # SCRAM credentials are stored in the cluster metadata when the data dir is formatted.
  KAFKA_FORMAT_EXTRA=(
    --add-scram "SCRAM-SHA-512=[name=$SECURE_USER,password=$SECURE_PASSWORD]"
    --add-scram "SCRAM-SHA-256=[name=$SECURE_USER,password=$SECURE_PASSWORD]"
  )
}

# ---------------------------------------------------------------------------------------- rabbitmq
rmq_env() {
  env RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq.conf" ERL_EPMD_ADDRESS=$HOST \
    RABBITMQ_DIST_PORT="$((RABBITMQ_PORT + 20000))" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia" RABBITMQ_LOG_BASE="$RMQ_DIR/log" \
    RABBITMQ_PID_FILE="$RMQ_DIR/rabbitmq.pid" RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins" \
    "$@"
}

rabbitmq_write_config() {
  mkdir -p "$RMQ_DIR"
  echo "[]." >"$RMQ_DIR/enabled_plugins"
  # With definitions to load the node seeds no default user (so no guest): our user comes from
  # them, with access to tenant-a only (tenant-b exists, for the isolation tests). RabbitMQ's
  # sha256 password hash: base64(salt + sha256(salt + password)), 4 random salt bytes.
  python3 - "$RMQ_DIR/definitions.json" "$SECURE_USER" "$SECURE_PASSWORD" "$RMQ_VHOST" "$RMQ_OTHER_VHOST" <<'PY'
import base64, hashlib, json, os, sys
path, user, password, vhost, other = sys.argv[1:]
salt = os.urandom(4)
digest = base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()
definitions = {
    "users": [{"name": user, "password_hash": digest, "tags": "",
               "hashing_algorithm": "rabbit_password_hashing_sha256"}],
    "vhosts": [{"name": vhost}, {"name": other}],
    "permissions": [{"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}],
}
with open(path, "w") as f:
    json.dump(definitions, f)
PY
  chmod 640 "$RMQ_DIR/definitions.json"
  cat >"$RMQ_DIR/rabbitmq.conf" <<EOF
# generated by scripts/brokers.sh --profile secure
listeners.tcp = none
listeners.ssl.default = $HOST:$RABBITMQ_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
loopback_users = none
load_definitions = $RMQ_DIR/definitions.json
EOF
  chmod 640 "$RMQ_DIR/rabbitmq.conf"
  chown -R rabbitmq:rabbitmq "$RMQ_DIR" 2>/dev/null || true
}

start_rabbitmq() {
  if port_open "$((RABBITMQ_PORT + 20000))"; then
    die "rabbitmq: Erlang distribution port $HOST:$((RABBITMQ_PORT + 20000)) is already in use (another node?)"
  fi
  mkdir -p "$RMQ_DIR/mnesia" "$RMQ_DIR/log"
  rabbitmq_write_config
  rm -f "$RMQ_DIR/rabbitmq.pid"
  # epmd is shared with the default profile's node; never ours to stop.
  rm -f "$RMQ_DIR/epmd.ours"
  (cd /tmp && rmq_env setsid rabbitmq-server -detached </dev/null >>"$RMQ_DIR/start.out" 2>&1)
}

# ------------------------------------------------------------------------------------------- redis
redis_tls_cli() {
  timeout 5 redis-cli --tls --cacert "$TLS_DIR/ca.pem" -h $HOST -p "$REDIS_PORT" \
    --user "$SECURE_USER" --pass "$SECURE_PASSWORD" --no-auth-warning "$@"
}

start_redis() {
  local run="$RUN_ROOT/redis"
  mkdir -p "$run"
  umask 077
  cat >"$run/redis.conf" <<EOF
# generated by scripts/brokers.sh --profile secure
bind $HOST
port 0
tls-port $REDIS_PORT
tls-cert-file $TLS_DIR/server.pem
tls-key-file $TLS_DIR/server.key
tls-ca-cert-file $TLS_DIR/ca.pem
tls-auth-clients optional
protected-mode yes
save ""
appendonly no
dir $run
logfile $run/redis.log
pidfile $run/redis.pid
daemonize yes
user default off
user $SECURE_USER on >$SECURE_PASSWORD ~* &* +@all
EOF
  umask 022
  redis-server "$run/redis.conf" >/dev/null
}

ready_redis() { [ "$(redis_tls_cli ping 2>/dev/null)" = PONG ]; }

version_redis() { redis_tls_cli info server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p'; }

stop_redis() {
  redis_tls_cli shutdown nosave >/dev/null 2>&1 || true
  local f
  f="$(pidfile_of redis)"
  if pid_alive "$f" redis-server; then kill_pidfile "$f" redis 10; fi
}

# -------------------------------------------------------------------------------------------- nats
nats_write_config() { # name port auth-block
  local run="$RUN_ROOT/nats"
  mkdir -p "$run/store-$1"
  umask 077
  cat >"$run/$1.conf" <<EOF
# generated by scripts/brokers.sh --profile secure
listen: "$HOST:$2"
tls {
  cert_file: "$TLS_DIR/server.pem"
  key_file: "$TLS_DIR/server.key"
  ca_file: "$TLS_DIR/ca.pem"
  timeout: 2
}
$3
jetstream {
  store_dir: "$run/store-$1"
  max_memory_store: 67108864
  max_file_store: 1073741824
}
EOF
  umask 022
}

start_nats() {
  local run="$RUN_ROOT/nats"
  nats_write_config users "$NATS_PORT" "authorization {
  users = [ { user: \"$SECURE_USER\", password: \"$SECURE_PASSWORD\" } ]
}"
  nats_write_config token "$NATS_TOKEN_PORT" "authorization {
  token: \"$SECURE_NATS_TOKEN\"
}"
  if ! pid_alive "$run/nats-token.pid" nats-server; then
    setsid nohup nats-server -c "$run/token.conf" -l "$run/nats-token.log" \
      >>"$run/nats-token.out" 2>&1 </dev/null &
    echo $! >"$run/nats-token.pid"
  fi
  setsid nohup nats-server -c "$run/users.conf" -l "$run/nats.log" \
    >>"$run/nats.out" 2>&1 </dev/null &
  echo $! >"$run/nats.pid"
}

nats_info_at() { # port -> the INFO line (sent in plaintext before the TLS handshake)
  local line=""
  exec 3<>"/dev/tcp/$HOST/$1" || return 1
  IFS= read -r -t 3 line <&3 || true
  exec 3>&- 3<&-
  printf '%s' "$line"
}

ready_nats() {
  port_open "$NATS_PORT" && port_open "$NATS_TOKEN_PORT" || return 1
  nats_info_at "$NATS_PORT" 2>/dev/null | grep -q '"jetstream":true' &&
    nats_info_at "$NATS_TOKEN_PORT" 2>/dev/null | grep -q '"jetstream":true'
}

version_nats() { nats_info_at "$NATS_PORT" 2>/dev/null | sed -n 's/.*"version":"\([^"]*\)".*/\1/p'; }

stop_nats() {
  local run="$RUN_ROOT/nats"
  if pid_alive "$run/nats-token.pid" nats-server; then kill_pidfile "$run/nats-token.pid" nats-token 20; fi
  rm -f "$run/nats-token.pid"
  kill_pidfile "$(pidfile_of nats)" nats 20
}
