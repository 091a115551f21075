#!/usr/bin/env bash
# Local message brokers for dispytch's integration tests, on 127.0.0.1 only.
#
#   scripts/brokers.sh up [kafka|rabbitmq|redis|nats ...]   install what is missing, start (default: all)
#   scripts/brokers.sh down [NAME ...]                        stop what THIS script started (default: all)
#   scripts/brokers.sh status                                 which brokers answer, and whose they are
#   scripts/brokers.sh restart NAME [NAME ...]                stop + start, keeping data (Kafka log, RabbitMQ mnesia)
#   scripts/brokers.sh clean                                  down, then wipe the run dir (all broker data)
#   scripts/brokers.sh tools                                  install the other Debian tools the tests use (chromium, tmux, prometheus)
#   scripts/brokers.sh --profile secure up|down|status|clean  the secured brokers (TLS + auth), see
#                                                             scripts/brokers-secure.sh; both profiles run at once
#   scripts/brokers.sh --profile cluster up|down|status|...   3-node clusters: scripts/cluster/cluster.sh
#
# Brokers:
#   kafka     Apache Kafka (KRaft, combined broker+controller) from Maven Central jars
#             (scripts/kafka/pom.xml), 127.0.0.1:9092, controller 127.0.0.1:9093
#   rabbitmq  Debian rabbitmq-server, AMQP 127.0.0.1:5672 (guest/guest works on loopback)
#   redis     Debian redis-server, 127.0.0.1:6379, no persistence
#   nats      Debian nats-server with JetStream, 127.0.0.1:4222
#
# Environment (all optional):
#   BROKERS_RUN_DIR   run/data dir root (default /tmp/dispytch-brokers; must be under /tmp)
#   KAFKA_VERSION     default 4.1.1; 3.9.x uses the reload4j/static-voters variant
#   KAFKA_PORT / KAFKA_CONTROLLER_PORT   default 9092 / 9093
#   KAFKA_NUM_PARTITIONS                 default partitions of auto-created topics (default 1)
#   KAFKA_HEAP                           default -Xmx512m -Xms512m
#   RABBITMQ_PORT / REDIS_PORT / NATS_PORT   default 5672 / 6379 / 4222
#   BROKERS_START_TIMEOUT                seconds to wait for each broker (default 120)
set -euo pipefail

# Profile: "default" (plaintext, the shared test brokers) or "secure" (TLS and authentication on
# other ports, its own run dir). Children started by this script inherit it.
if [ "${1:-}" = "--profile" ]; then BROKERS_PROFILE="${2:?--profile needs a name}"; shift 2; fi
export BROKERS_PROFILE="${BROKERS_PROFILE:-default}"
case "$BROKERS_PROFILE" in
  default) ;;
  secure)
    # Distinct ports and run dir, so the secure brokers run beside the default ones.
    : "${BROKERS_RUN_DIR:=/tmp/dispytch-secure}" "${KAFKA_PORT:=27092}" "${KAFKA_CONTROLLER_PORT:=27093}"
    : "${RABBITMQ_PORT:=27671}" "${REDIS_PORT:=27379}" "${NATS_PORT:=27422}" "${NATS_TOKEN_PORT:=27423}"
    : "${RABBITMQ_NODENAME:=secure@localhost}" "${KAFKA_HEAP:=-Xmx384m -Xms384m}"
    export BROKERS_RUN_DIR KAFKA_PORT KAFKA_CONTROLLER_PORT RABBITMQ_PORT REDIS_PORT NATS_PORT \
      NATS_TOKEN_PORT RABBITMQ_NODENAME KAFKA_HEAP
    ;;
  # 3-node replicated clusters on ports 29xxx: their own script (see its header)
  cluster) exec bash "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/cluster/cluster.sh" "$@" ;;
  *) echo "brokers.sh: unknown profile '$BROKERS_PROFILE' (expected: default, secure, cluster)" >&2; exit 2 ;;
esac

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
HERE="$(dirname "$SELF")"
KAFKA_HOME_DIR="$HERE/kafka"
KAFKA_LIBS="$KAFKA_HOME_DIR/target/libs"

RUN_ROOT="${BROKERS_RUN_DIR:-/tmp/dispytch-brokers}"
case "$RUN_ROOT" in /tmp/?*) ;; *) echo "brokers.sh: BROKERS_RUN_DIR=$RUN_ROOT must be under /tmp" >&2; exit 2 ;; esac

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_NUM_PARTITIONS="${KAFKA_NUM_PARTITIONS:-1}"
KAFKA_HEAP="${KAFKA_HEAP:--Xmx512m -Xms512m}"
RABBITMQ_PORT="${RABBITMQ_PORT:-5672}"
REDIS_PORT="${REDIS_PORT:-6379}"
NATS_PORT="${NATS_PORT:-4222}"
START_TIMEOUT="${BROKERS_START_TIMEOUT:-120}"

ALL_BROKERS=(kafka rabbitmq redis nats)
HOST=127.0.0.1

# RabbitMQ: fixed node name on "localhost" (does not depend on the machine's hostname resolving),
# every listener on loopback, data and logs in the run dir (owned by the rabbitmq user).
RMQ_DIR="$RUN_ROOT/rabbitmq"
export RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-rabbit@localhost}"

# ----------------------------------------------------------------------------------------- helpers
log() { printf '%s\n' "$*"; }
die() { printf 'brokers.sh: error: %s\n' "$*" >&2; exit 1; }
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

port_open() { # port -> 0 if something accepts TCP on 127.0.0.1:port
  (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

pid_alive() { # pidfile [cmdline-substring] -> 0 if the pid in the file runs (and matches)
  local f="$1" want="${2:-}" pid
  [ -s "$f" ] || return 1
  pid="$(tr -dc '0-9' <"$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  if [ -n "$want" ]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$want" || return 1
  fi
}

pid_of() { tr -dc '0-9' <"$1"; }

kill_pidfile() { # pidfile name [grace seconds]: SIGTERM, wait, SIGKILL
  local f="$1" name="$2" grace="${3:-30}" pid i
  pid="$(pid_of "$f")"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 4; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.25
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still running after ${grace}s, sending SIGKILL to $pid"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
}

wait_port_closed() { # port seconds
  local i
  for ((i = 0; i < $2 * 4; i++)); do port_open "$1" || return 0; sleep 0.25; done
  return 1
}

valid_broker() { case "$1" in kafka | rabbitmq | redis | nats) return 0 ;; *) return 1 ;; esac; }

port_of() {
  case "$1" in
    kafka) echo "$KAFKA_PORT" ;; rabbitmq) echo "$RABBITMQ_PORT" ;;
    redis) echo "$REDIS_PORT" ;; nats) echo "$NATS_PORT" ;;
  esac
}

pidfile_of() {
  case "$1" in
    kafka) echo "$RUN_ROOT/kafka/kafka.pid" ;; rabbitmq) echo "$RMQ_DIR/rabbitmq.pid" ;;
    redis) echo "$RUN_ROOT/redis/redis.pid" ;; nats) echo "$RUN_ROOT/nats/nats.pid" ;;
  esac
}

cmd_match_of() { # substring of /proc/PID/cmdline that identifies our process
  case "$1" in
    kafka) echo "kafka.Kafka" ;; rabbitmq) echo "beam" ;;
    redis) echo "redis-server" ;; nats) echo "nats-server" ;;
  esac
}

ours() { pid_alive "$(pidfile_of "$1")" "$(cmd_match_of "$1")"; }

# Extra StorageTool arguments (the secure profile adds its SCRAM users); run once before `up`.
KAFKA_FORMAT_EXTRA=()
prepare_profile() { :; }

# ------------------------------------------------------------------------------------ installation
missing_packages() { # brokers... -> sets MISSING array (Debian packages to install)
  local b
  MISSING=()
  for b in "$@"; do
    case "$b" in
      kafka)
        command -v java >/dev/null 2>&1 || MISSING+=(openjdk-17-jre-headless)
        if ! ls "$KAFKA_LIBS"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1; then
          command -v mvn >/dev/null 2>&1 || MISSING+=(maven)
        fi
        command -v python3 >/dev/null 2>&1 || MISSING+=(python3)
        ;;
      rabbitmq) command -v rabbitmq-server >/dev/null 2>&1 || MISSING+=(rabbitmq-server) ;;
      redis) command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 || MISSING+=(redis-server redis-tools) ;;
      nats) command -v nats-server >/dev/null 2>&1 || MISSING+=(nats-server) ;;
    esac
  done
}

install_packages() { # packages...
  local missing=("$@")
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    log "brokers.sh: error: missing packages (${missing[*]}) and not root: install them first" >&2
    return 1
  fi
  local t0
  t0="$(now)"
  log "installing: ${missing[*]}"
  # Do not let apt start the distro services (they would take our ports with their own config).
  local policy=/usr/sbin/policy-rc.d made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
  fi
  local rc=0
  {
    apt-get update -q >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >"$RUN_ROOT/apt.log" 2>&1
  } || rc=$?
  if [ "$made_policy" -eq 1 ]; then rm -f "$policy"; fi
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$RUN_ROOT/apt.log" >&2 || true
    log "brokers.sh: error: apt-get install ${missing[*]} failed (rc=$rc, full log $RUN_ROOT/apt.log)" >&2
    return 1
  fi
  log "installed in $(elapsed "$t0")s"
}

kafka_major() { echo "${KAFKA_VERSION%%.*}"; }

ensure_kafka_libs() {
  if ls "$KAFKA_LIBS"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1; then return 0; fi
  # Both profiles share the jars: one resolves them, the other waits (runs in `_start kafka`,
  # its own process, so the lock goes with it).
  mkdir -p "$KAFKA_HOME_DIR/target"
  exec 8>"$KAFKA_HOME_DIR/target/.resolve.lock"
  flock -w 900 8 || die "kafka: could not get the lock $KAFKA_HOME_DIR/target/.resolve.lock"
  if ls "$KAFKA_LIBS"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1; then return 0; fi
  local profile t0 log_file="$RUN_ROOT/kafka-mvn.log"
  case "$(kafka_major)" in
    3) profile=kafka3 ;;
    4) profile=kafka4 ;;
    *) die "KAFKA_VERSION=$KAFKA_VERSION: only 3.x and 4.x are supported" ;;
  esac
  t0="$(now)"
  log "kafka: resolving Kafka $KAFKA_VERSION jars with Maven into $KAFKA_LIBS"
  rm -rf "$KAFKA_LIBS"
  mkdir -p "$RUN_ROOT"
  local mvn_args=(-B -q -f "$KAFKA_HOME_DIR/pom.xml" -P "$profile" -Dkafka.version="$KAFKA_VERSION")
  # offline first (fast when ~/.m2 is warm), then online
  if ! mvn -o "${mvn_args[@]}" dependency:copy-dependencies >"$log_file" 2>&1; then
    rm -rf "$KAFKA_LIBS"
    mvn "${mvn_args[@]}" dependency:copy-dependencies >"$log_file" 2>&1 || {
      tail -n 40 "$log_file" >&2
      die "kafka: Maven could not resolve Kafka $KAFKA_VERSION (log $log_file)"
    }
  fi
  ls "$KAFKA_LIBS"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 ||
    die "kafka: Maven ran but $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar is missing"
  local jars=("$KAFKA_LIBS"/*.jar)
  log "kafka: ${#jars[@]} jars resolved in $(elapsed "$t0")s"
}

# ------------------------------------------------------------------------------------------ kafka
kafka_java() { echo "${JAVA_HOME:+$JAVA_HOME/bin/}java"; }

kafka_log_opts() {
  if [ "$(kafka_major)" = 3 ]; then
    echo "-Dlog4j.configuration=file:$KAFKA_HOME_DIR/log4j.properties"
  else
    echo "-Dlog4j2.configurationFile=$KAFKA_HOME_DIR/log4j2.properties"
  fi
}

kafka_common_properties() { # run dir -> the settings every profile's broker shares
  cat <<EOF
log.dirs=$1/data
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
auto.create.topics.enable=true
num.partitions=$KAFKA_NUM_PARTITIONS
default.replication.factor=1
min.insync.replicas=1
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=5
group.initial.rebalance.delay.ms=0
log.segment.bytes=16777216
log.cleaner.dedupe.buffer.size=2097152
EOF
}

kafka_node_properties() { # the single combined broker+controller node, every profile
  echo "process.roles=broker,controller"
  echo "node.id=1"
  if [ "$(kafka_major)" = 3 ]; then
    echo "controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT"
  else
    # dynamic quorum (KIP-853): formatted with --standalone
    echo "controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT"
    echo "share.coordinator.state.topic.replication.factor=1"
    echo "share.coordinator.state.topic.min.isr=1"
  fi
}

kafka_write_config() {
  local run="$1"
  cat >"$run/server.properties" <<EOF
# generated by scripts/brokers.sh
$(kafka_node_properties)
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
$(kafka_common_properties "$run")
# after a kill -9 the restarted broker can only re-register once the old registration's session
# has expired (default 9 s); shorter so fault tests that kill the broker restart faster
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
EOF
}

kafka_cluster_id() {
  python3 -c 'import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break'
}

start_kafka() {
  local run="$RUN_ROOT/kafka" java fmt_id
  ensure_kafka_libs
  exec 8>&- # release the resolve lock: the broker started below must not inherit (and hold) it
  java="$(kafka_java)"
  if port_open "$KAFKA_CONTROLLER_PORT"; then
    die "kafka: controller port $HOST:$KAFKA_CONTROLLER_PORT is already in use (set KAFKA_CONTROLLER_PORT)"
  fi
  mkdir -p "$run/data" "$run/logs"
  kafka_write_config "$run"
  # Format only once; a formatted data dir is kept across down/up/restart so topics survive.
  # The stamp records what the dir was formatted for; a different version family or controller
  # port needs a fresh dir (the controller endpoint is written into the bootstrap metadata).
  fmt_id="major=$(kafka_major) controller=$HOST:$KAFKA_CONTROLLER_PORT"
  if [ -f "$run/data/meta.properties" ] && [ "$(cat "$run/format.stamp" 2>/dev/null)" != "$fmt_id" ]; then
    log "kafka: data dir was formatted for '$(cat "$run/format.stamp" 2>/dev/null)', not '$fmt_id': wiping it"
    rm -rf "$run/data" && mkdir -p "$run/data"
  fi
  if [ ! -f "$run/data/meta.properties" ]; then
    local fmt_args=(format -t "$(kafka_cluster_id)" -c "$run/server.properties")
    [ "$(kafka_major)" = 3 ] || fmt_args+=(--standalone)
    fmt_args+=("${KAFKA_FORMAT_EXTRA[@]}")
    # shellcheck disable=SC2046
    "$java" -Xmx256m $(kafka_log_opts) -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool "${fmt_args[@]}" \
      >"$run/format.out" 2>&1 || {
      cat "$run/format.out" >&2
      die "kafka: formatting $run/data failed"
    }
    echo "$fmt_id" >"$run/format.stamp"
    log "kafka: formatted $run/data"
  fi
  # shellcheck disable=SC2046,SC2086
  setsid nohup "$java" $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true \
    $(kafka_log_opts) -Dkafka.logs.dir="$run/logs" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$run/server.properties" >>"$run/kafka.out" 2>&1 </dev/null &
  echo $! >"$run/kafka.pid"
}

ready_kafka() {
  # The PLAINTEXT port is opened only once the broker is unfenced (SocketServer defers the acceptor).
  port_open "$KAFKA_PORT" && grep -q "Kafka Server started" "$RUN_ROOT/kafka/kafka.out" 2>/dev/null
}

version_kafka() {
  local j
  for j in "$KAFKA_LIBS"/kafka_2.13-*.jar; do break; done
  [ -e "$j" ] || return 0
  j="${j##*/kafka_2.13-}"
  echo "${j%.jar}"
}

stop_kafka() { kill_pidfile "$(pidfile_of kafka)" kafka 45; }

# ---------------------------------------------------------------------------------------- rabbitmq
rmq_env() {
  env RABBITMQ_NODE_IP_ADDRESS=$HOST RABBITMQ_NODE_PORT="$RABBITMQ_PORT" ERL_EPMD_ADDRESS=$HOST \
    RABBITMQ_DIST_PORT="$((RABBITMQ_PORT + 20000))" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}" \
    RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia" RABBITMQ_LOG_BASE="$RMQ_DIR/log" \
    RABBITMQ_PID_FILE="$RMQ_DIR/rabbitmq.pid" \
    "$@"
}

rmqctl() { rmq_env rabbitmqctl -q "$@"; }

EPMD_PORT=4369

start_rabbitmq() {
  if port_open "$((RABBITMQ_PORT + 20000))"; then
    die "rabbitmq: Erlang distribution port $HOST:$((RABBITMQ_PORT + 20000)) is already in use (another node?)"
  fi
  mkdir -p "$RMQ_DIR/mnesia" "$RMQ_DIR/log"
  chown -R rabbitmq:rabbitmq "$RMQ_DIR" 2>/dev/null || true
  rm -f "$RMQ_DIR/rabbitmq.pid"
  # The node starts epmd (Erlang port mapper) if none runs; remember that so `down` can stop it.
  if ! port_open "$EPMD_PORT"; then touch "$RMQ_DIR/epmd.ours"; else rm -f "$RMQ_DIR/epmd.ours"; fi
  (cd /tmp && rmq_env setsid rabbitmq-server -detached </dev/null >>"$RMQ_DIR/start.out" 2>&1)
}

epmd_pid() { # pid of the process listening on the epmd port (empty if none)
  ss -ltnpH "sport = :$EPMD_PORT" 2>/dev/null | sed -n 's/.*"epmd",pid=\([0-9]*\).*/\1/p' | head -n1
}

ready_rabbitmq() {
  # AMQP port open first (cheap), then a real check through the CLI (one Erlang VM start)
  port_open "$RABBITMQ_PORT" || return 1
  rmqctl await_startup --timeout 30 >/dev/null 2>&1
}

version_rabbitmq() { dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null | sed 's/-.*//' || echo "?"; }

stop_rabbitmq() {
  local f
  f="$(pidfile_of rabbitmq)"
  # graceful: rabbitmqctl stop PIDFILE returns once the OS process is gone
  rmq_env timeout 60 rabbitmqctl -q stop "$f" >/dev/null 2>&1 || true
  if pid_alive "$f" beam; then kill_pidfile "$f" rabbitmq 20; fi
  # stop epmd too if our node started it and no other Erlang node is registered with it
  if [ -f "$RMQ_DIR/epmd.ours" ]; then
    local epid
    epid="$(epmd_pid)"
    if [ -n "$epid" ] && ! epmd -names 2>/dev/null | grep -q '^name '; then
      kill -TERM "$epid" 2>/dev/null || true
    fi
    rm -f "$RMQ_DIR/epmd.ours"
  fi
}

# ------------------------------------------------------------------------------------------- redis
start_redis() {
  local run="$RUN_ROOT/redis"
  mkdir -p "$run"
  redis-server --daemonize yes --bind $HOST --port "$REDIS_PORT" --protected-mode yes \
    --save "" --appendonly no --dir "$run" \
    --logfile "$run/redis.log" --pidfile "$run/redis.pid" >/dev/null
}

ready_redis() { [ "$(timeout 5 redis-cli -h $HOST -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

version_redis() {
  timeout 5 redis-cli -h $HOST -p "$REDIS_PORT" info server 2>/dev/null | tr -d '\r' | sed -n 's/^redis_version://p'
}

stop_redis() {
  timeout 10 redis-cli -h $HOST -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  local f
  f="$(pidfile_of redis)"
  if pid_alive "$f" redis-server; then kill_pidfile "$f" redis 10; fi
}

# -------------------------------------------------------------------------------------------- nats
start_nats() {
  local run="$RUN_ROOT/nats"
  mkdir -p "$run/store"
  setsid nohup nats-server -a $HOST -p "$NATS_PORT" -js -sd "$run/store" \
    -l "$run/nats.log" -P "$run/nats.pid" >>"$run/nats.out" 2>&1 </dev/null &
  echo $! >"$run/nats.pid"
}

nats_info() { # first line the server sends: INFO {...}
  local line=""
  exec 3<>"/dev/tcp/$HOST/$NATS_PORT" || return 1
  IFS= read -r -t 3 line <&3 || true
  exec 3>&- 3<&-
  printf '%s' "$line"
}

ready_nats() {
  port_open "$NATS_PORT" || return 1
  nats_info 2>/dev/null | grep -q '"jetstream":true'
}

version_nats() { nats_info 2>/dev/null | sed -n 's/.*"version":"\([^"]*\)".*/\1/p'; }

stop_nats() { kill_pidfile "$(pidfile_of nats)" nats 20; }

# ------------------------------------------------------------------------------------------ driver
# Runs in its own process (`brokers.sh _start NAME`), so `set -e` applies normally.
start_one() {
  local b="$1" t0 port deadline pidf
  port="$(port_of "$b")"
  pidf="$(pidfile_of "$b")"
  if port_open "$port"; then
    if "ready_$b"; then
      if ours "$b"; then
        log "$b: already running (pid $(pid_of "$pidf")), version $("version_$b")"
      else
        log "$b: already answering on $HOST:$port (not started by this script), version $("version_$b")"
      fi
      return 0
    fi
    if ! ours "$b"; then die "$b: port $HOST:$port is taken by something that is not a ready $b"; fi
    log "$b: our process (pid $(pid_of "$pidf")) is starting, waiting for it"
  else
    if ours "$b"; then
      log "$b: our pid $(pid_of "$pidf") is alive but port $port is closed; waiting for it"
    else
      t0="$(now)"
      "start_$b"
    fi
  fi
  t0="${t0:-$(now)}"
  deadline=$((SECONDS + START_TIMEOUT))
  until "ready_$b"; do
    if [ -s "$pidf" ] && ! pid_alive "$pidf"; then
      tail_log "$b" >&2
      die "$b: process exited during start-up"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail_log "$b" >&2
      die "$b: not ready after ${START_TIMEOUT}s"
    fi
    sleep 0.2
  done
  log "$b: ready on $HOST:$port (pid $(pid_of "$pidf" 2>/dev/null || echo '?')), version $("version_$b"), start-up $(elapsed "$t0")s"
}

tail_log() {
  case "$1" in
    kafka)
      echo "--- first ERROR/FATAL lines of $RUN_ROOT/kafka/kafka.out:"
      grep -E '^\[[^]]*\] (ERROR|FATAL) |^Caused by' "$RUN_ROOT/kafka/kafka.out" 2>/dev/null | head -n 12
      echo "--- last lines:"
      tail -n 25 "$RUN_ROOT/kafka/kafka.out" 2>/dev/null
      ;;
    rabbitmq) cat "$RMQ_DIR/start.out" 2>/dev/null; tail -n 60 "$RMQ_DIR"/log/*.log 2>/dev/null ;;
    redis) tail -n 30 "$RUN_ROOT/redis/redis.log" 2>/dev/null ;;
    nats) tail -n 30 "$RUN_ROOT/nats/nats.log" "$RUN_ROOT/nats/nats.out" 2>/dev/null ;;
  esac || true
}

stop_one() {
  local b="$1" pidf
  pidf="$(pidfile_of "$b")"
  if ours "$b"; then
    local t0
    t0="$(now)"
    "stop_$b"
    wait_port_closed "$(port_of "$b")" 10 || log "$b: warning: port $(port_of "$b") still open after stop"
    rm -f "$pidf"
    log "$b: stopped in $(elapsed "$t0")s"
  else
    rm -f "$pidf" 2>/dev/null || true
    if port_open "$(port_of "$b")"; then
      log "$b: not started by this script (port $(port_of "$b") answers): left alone"
    else
      log "$b: not running"
    fi
  fi
}

parse_names() { # args -> NAMES array (default all), validated
  NAMES=()
  local n
  if [ "$#" -eq 0 ]; then NAMES=("${ALL_BROKERS[@]}"); return; fi
  for n in "$@"; do
    valid_broker "$n" || die "unknown broker '$n' (expected: ${ALL_BROKERS[*]})"
    NAMES+=("$n")
  done
}

# Parallel runs of `brokers.sh _ACTION NAME` (own process, so `set -e` works normally there),
# output prefixed with [NAME], exit codes collected in PAR_DIR.
PAR_DIR=""

par_launch() { # action name
  [ -n "$PAR_DIR" ] || PAR_DIR="$(mktemp -d /tmp/brokers-rc.XXXXXX)"
  (
    set +e
    # fd 9 (the lock) is closed so that daemons started below do not inherit it
    "$BASH" "$SELF" "_$1" "$2" 9>&- 2>&1 | sed -u "s/^/[$2] /"
    echo "${PIPESTATUS[0]}" >"$PAR_DIR/$2"
  ) &
}

par_collect() { # action names... -> waits for all launched, 1 if any failed
  local action="$1" b rc=0
  shift
  wait
  for b in "$@"; do
    if [ "$(cat "$PAR_DIR/$b" 2>/dev/null || echo 1)" != 0 ]; then
      log "FAILED: $action $b"
      rc=1
    fi
  done
  rm -rf "$PAR_DIR"
  PAR_DIR=""
  return "$rc"
}

run_parallel() { # action names...
  local action="$1" b
  shift
  for b in "$@"; do par_launch "$action" "$b"; done
  par_collect "$action" "$@"
}

cmd_up() {
  parse_names "$@"
  local t0 b rc=0 launched=()
  t0="$(now)"
  mkdir -p "$RUN_ROOT"
  prepare_profile
  # Kafka needs no Debian package when java/mvn are there: start it (Maven resolve, format, JVM)
  # right away, in parallel with apt-get for the others.
  for b in "${NAMES[@]}"; do
    if [ "$b" = kafka ]; then
      missing_packages kafka
      if [ "${#MISSING[@]}" -eq 0 ]; then par_launch start kafka && launched+=(kafka); fi
    fi
  done
  missing_packages "${NAMES[@]}"
  install_packages "${MISSING[@]}" || rc=$?
  if [ "$rc" -eq 0 ]; then
    for b in "${NAMES[@]}"; do
      case " ${launched[*]} " in *" $b "*) ;; *) par_launch start "$b" && launched+=("$b") ;; esac
    done
  fi
  par_collect start "${launched[@]}" || rc=1
  if [ "$rc" -eq 0 ]; then
    log "up: ${NAMES[*]} ready, total $(elapsed "$t0")s"
  else
    log "up: FAILED after $(elapsed "$t0")s (logs under $RUN_ROOT)"
  fi
  return "$rc"
}

cmd_down() {
  parse_names "$@"
  run_parallel stop "${NAMES[@]}"
}

cmd_status() {
  local b port state owner version
  printf '%-9s %-5s %-16s %-24s %s\n' BROKER STATE ADDRESS OWNER VERSION
  for b in "${ALL_BROKERS[@]}"; do
    port="$(port_of "$b")"
    version=""
    if port_open "$port"; then
      state=up
      version="$("version_$b" 2>/dev/null || true)"
    else
      state=down
    fi
    if ours "$b"; then owner="brokers.sh pid $(pid_of "$(pidfile_of "$b")")"; elif [ "$state" = up ]; then owner=other; else owner=-; fi
    printf '%-9s %-5s %-16s %-24s %s\n' "$b" "$state" "$HOST:$port" "$owner" "${version:--}"
  done
  return 0
}

cmd_restart() {
  [ "$#" -ge 1 ] || die "usage: $0 restart NAME [NAME ...]"
  parse_names "$@"
  local b
  for b in "${NAMES[@]}"; do
    if port_open "$(port_of "$b")" && ! ours "$b"; then
      die "$b: running but not started by this script; refusing to restart it"
    fi
  done
  cmd_down "${NAMES[@]}"
  cmd_up "${NAMES[@]}"
}

cmd_clean() {
  cmd_down
  # keep the lock file itself (we hold it), remove everything else
  find "$RUN_ROOT" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +
  log "wiped $RUN_ROOT"
}

usage() {
  sed -n '2,12p' "$SELF" | sed 's/^# \{0,1\}//'
}

lock() { # serialise concurrent up/down/restart/clean (e.g. several test runners)
  mkdir -p "$RUN_ROOT"
  exec 9>"$RUN_ROOT/.lock"
  flock -w 600 9 || die "could not get the lock $RUN_ROOT/.lock within 600s"
}

cmd_tools() { # Debian packages the test suite needs besides the brokers
  local missing=()
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  command -v tmux >/dev/null 2>&1 || missing+=(tmux) # the terminal test of dispytch dlq
  # Prometheus scrapes `dispytch run --http` in tests/operations (started by the test itself on
  # a port of its own; apt must not start the distro service: install_packages sees to it).
  command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
  mkdir -p "$RUN_ROOT"
  install_packages "${missing[@]}"
}

# The secure profile replaces the start/ready/stop functions of each broker.
if [ "$BROKERS_PROFILE" = secure ]; then
  # shellcheck source=scripts/brokers-secure.sh
  . "$HERE/brokers-secure.sh"
fi

main() {
  local cmd="${1:-}"
  [ "$#" -gt 0 ] && shift
  case "$cmd" in up | down | stop | restart | clean | tools) lock ;; esac
  case "$cmd" in
    up) cmd_up "$@" ;;
    down | stop) cmd_down "$@" ;;
    status) cmd_status ;;
    restart) cmd_restart "$@" ;;
    clean) cmd_clean ;;
    tools) cmd_tools ;;
    _start) start_one "$1" ;;
    _stop) stop_one "$1" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
