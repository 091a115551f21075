#!/usr/bin/env bash
# Replicated brokers on 127.0.0.1 for cluster and failover tests: the `cluster` profile.
#
#   scripts/cluster/cluster.sh up [kafka|rabbitmq|nats|redis ...]   start (default: all), wait until healthy
#   scripts/cluster/cluster.sh down [NAME ...]                       stop what this script started (data kept)
#   scripts/cluster/cluster.sh clean                                 down, then wipe the run dir
#   scripts/cluster/cluster.sh status                                every node: up/down/paused, pid, port
#   scripts/cluster/cluster.sh health NAME                           exit 0 if NAME's cluster is whole and led
#   scripts/cluster/cluster.sh urls                                  the Dispytch URL of each cluster
#   scripts/cluster/cluster.sh kill NAME NODE                        SIGKILL one node (a crash)
#   scripts/cluster/cluster.sh start NAME NODE                       (re)start one node, wait until it serves
#   scripts/cluster/cluster.sh pause|resume NAME NODE                SIGSTOP / SIGCONT one node (a partition)
#   scripts/cluster/cluster.sh pid NAME NODE                         the node's pid (empty if not running)
#   scripts/cluster/cluster.sh rabbitmqctl|rabbitmq-queues ARGS...   that CLI on a running node
#
# Clusters (all ports in 29000-29999, nothing else of the project uses that range):
#   kafka     3 KRaft nodes, each broker+controller (static voters), replication factor 3,
#             min.insync.replicas=2. Node N: client 127.0.0.1:2909N, controller 2919N.
#   rabbitmq  3 nodes rmq1..3@localhost joined in one cluster (quorum queues get 3 members),
#             autoheal (a node frozen with SIGSTOP does not notice it was cut off, so
#             pause_minority never pauses it; autoheal restarts the losing side).
#             Node N: AMQP 2967N, Erlang distribution 2968N (epmd 4369 shared).
#   nats      3 nats-server nodes in cluster "dispytch", JetStream on each (streams up to R3).
#             Node N: client 2942N, routes 2952N, HTTP monitoring 2962N.
#   redis     a master (node 1 at first) and two replicas, nodes N on 2938N, all with AOF, watched
#             by 3 Sentinels (s1..s3 on 2939N, master name "dispytch", quorum 2). Two replicas, not
#             one: Dispytch waits for one replica to confirm each emit (WAIT 1), so with a single
#             replica the loss of either node would stop every emit until it came back.
#
# Environment (all optional):
#   CLUSTER_RUN_DIR     run/data dir root (default /tmp/dispytch-cluster; must be under /tmp)
#   CLUSTER_KAFKA_HEAP  JVM heap of each Kafka node (default -Xmx256m -Xms256m)
#   CLUSTER_TIMEOUT     seconds to wait for a cluster to become healthy (default 180)
set -euo pipefail

SELF="$(readlink -f "${BASH_SOURCE[0]}")"
HERE="$(dirname "$SELF")"
SCRIPTS="$(dirname "$HERE")"
KAFKA_HOME_DIR="$SCRIPTS/kafka"
KAFKA_LIBS="$KAFKA_HOME_DIR/target/libs"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"

RUN_ROOT="${CLUSTER_RUN_DIR:-/tmp/dispytch-cluster}"
case "$RUN_ROOT" in /tmp/?*) ;; *) echo "cluster.sh: CLUSTER_RUN_DIR=$RUN_ROOT must be under /tmp" >&2; exit 2 ;; esac
KAFKA_HEAP="${CLUSTER_KAFKA_HEAP:--Xmx256m -Xms256m}"
TIMEOUT="${CLUSTER_TIMEOUT:-180}"
HOST=127.0.0.1
ALL=(kafka rabbitmq nats redis)
NODES=(1 2 3)
EPMD_PORT=4369

# ------------------------------------------------------------------------------------------ ports
kafka_port() { echo $((29090 + $1)); }
kafka_controller_port() { echo $((29190 + $1)); }
rmq_port() { echo $((29670 + $1)); }
rmq_dist_port() { echo $((29680 + $1)); }
rmq_node() { echo "rmq$1@localhost"; }
nats_port() { echo $((29420 + $1)); }
nats_route_port() { echo $((29520 + $1)); }
nats_http_port() { echo $((29620 + $1)); }
redis_port() { echo $((29380 + $1)); }      # node 1..3: 29381..29383
sentinel_port() { echo $((29390 + $1)); }   # sentinel 1..3: 29391..29393
REDIS_MASTER_NAME=dispytch

nodes_of() { case "$1" in redis) echo "1 2 3 s1 s2 s3" ;; *) echo "${NODES[*]}" ;; esac; }

port_of() { # name node -> the port that says the node is up
  case "$1:$2" in
    kafka:*) kafka_port "$2" ;;
    rabbitmq:*) rmq_port "$2" ;;
    nats:*) nats_port "$2" ;;
    redis:s*) sentinel_port "${2#s}" ;;
    redis:*) redis_port "$2" ;;
  esac
}

dir_of() { echo "$RUN_ROOT/$1/$2"; }
pidfile_of() { echo "$(dir_of "$1" "$2")/pid"; }

cmd_match_of() {
  case "$1" in kafka) echo kafka.Kafka ;; rabbitmq) echo beam ;; nats) echo nats-server ;; redis) echo redis-server ;; esac
}

# ---------------------------------------------------------------------------------------- helpers
log() { printf '%s\n' "$*"; }
die() { printf 'cluster.sh: error: %s\n' "$*" >&2; exit 1; }
now() { printf '%s' "${EPOCHREALTIME/,/.}"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

valid_name() { case "$1" in kafka | rabbitmq | nats | redis) return 0 ;; *) return 1 ;; esac; }

valid_node() { # name node
  local n
  for n in $(nodes_of "$1"); do [ "$n" = "$2" ] && return 0; done
  return 1
}

node_pid() { # name node -> pid of our live process, or nothing
  local f pid
  f="$(pidfile_of "$1" "$2")"
  [ -s "$f" ] || return 0
  pid="$(tr -dc '0-9' <"$f")"
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(cmd_match_of "$1")" || return 0
  echo "$pid"
}

node_state() { # name node -> up | down | paused | starting
  local pid
  pid="$(node_pid "$1" "$2")"
  [ -n "$pid" ] || { echo down; return; }
  if grep -q '^State:[[:space:]]*T' "/proc/$pid/status" 2>/dev/null; then echo paused; return; fi
  if port_open "$(port_of "$1" "$2")"; then echo up; else echo starting; fi
}

wait_until() { # seconds what command... : poll the command until it succeeds
  local secs="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || { log "timed out after ${secs}s waiting for $what" >&2; return 1; }
    sleep 0.3
  done
}

stop_pid() { # pid grace-seconds: SIGTERM (SIGCONT first, a paused process cannot exit), then SIGKILL
  local pid="$1" grace="$2" i
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 4; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.25; done
  log "pid $pid still running after ${grace}s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 0.3
}

# ------------------------------------------------------------------------------------------ kafka
kafka_ensure_libs() {
  ls "$KAFKA_LIBS"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 && return 0
  # the same jars as the default profile (scripts/brokers.sh): resolve them the same way
  local args=(-B -q -f "$KAFKA_HOME_DIR/pom.xml" -P kafka4 -Dkafka.version="$KAFKA_VERSION")
  mkdir -p "$RUN_ROOT"
  log "kafka: resolving Kafka $KAFKA_VERSION jars with Maven"
  mvn -o "${args[@]}" dependency:copy-dependencies >"$RUN_ROOT/kafka-mvn.log" 2>&1 ||
    mvn "${args[@]}" dependency:copy-dependencies >"$RUN_ROOT/kafka-mvn.log" 2>&1 ||
    die "kafka: Maven could not resolve the jars (log $RUN_ROOT/kafka-mvn.log)"
}

kafka_java() { echo "${JAVA_HOME:+$JAVA_HOME/bin/}java"; }

kafka_voters() {
  local n out=""
  for n in "${NODES[@]}"; do out+="${out:+,}$n@$HOST:$(kafka_controller_port "$n")"; done
  echo "$out"
}

kafka_write_config() { # node
  local n="$1" dir
  dir="$(dir_of kafka "$n")"
  cat >"$dir/server.properties" <<EOF
# generated by scripts/cluster/cluster.sh (cluster profile, node $n of 3)
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(kafka_voters)
listeners=PLAINTEXT://$HOST:$(kafka_port "$n"),CONTROLLER://$HOST:$(kafka_controller_port "$n")
advertised.listeners=PLAINTEXT://$HOST:$(kafka_port "$n"),CONTROLLER://$HOST:$(kafka_controller_port "$n")
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/data
num.network.threads=2
num.io.threads=2
num.replica.fetchers=1
background.threads=2
num.recovery.threads.per.data.dir=1
auto.create.topics.enable=true
num.partitions=1
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=3
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
# A dead or paused node is fenced (and loses its leaderships) after 4 s without a heartbeat.
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=4000
controller.quorum.election.timeout.ms=1000
controller.quorum.fetch.timeout.ms=2000
# A follower that stops fetching leaves the ISR after 10 s (default 30 s).
replica.lag.time.max.ms=10000
log.segment.bytes=16777216
log.cleaner.dedupe.buffer.size=2097152
EOF
}

kafka_format() { # cluster-id node
  local n="$2" dir
  dir="$(dir_of kafka "$n")"
  [ -f "$dir/data/meta.properties" ] && return 0
  # shellcheck disable=SC2046
  "$(kafka_java)" -Xmx256m -Dlog4j2.configurationFile="$KAFKA_HOME_DIR/log4j2.properties" \
    -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format -t "$1" -c "$dir/server.properties" \
    >"$dir/format.out" 2>&1 || { cat "$dir/format.out" >&2; die "kafka: formatting node $n failed"; }
}

kafka_prepare() { # write configs, format every node once with one cluster id
  local n id
  kafka_ensure_libs
  for n in "${NODES[@]}"; do mkdir -p "$(dir_of kafka "$n")/data"; kafka_write_config "$n"; done
  if [ ! -f "$RUN_ROOT/kafka/cluster.id" ]; then
    for n in "${NODES[@]}"; do rm -rf "$(dir_of kafka "$n")/data" && mkdir -p "$(dir_of kafka "$n")/data"; done
    python3 -c 'import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break' >"$RUN_ROOT/kafka/cluster.id"
  fi
  id="$(cat "$RUN_ROOT/kafka/cluster.id")"
  # formats run one after the other: each is a JVM start, and CPU is scarce
  for n in "${NODES[@]}"; do kafka_format "$id" "$n"; done
}

start_kafka_node() {
  local n="$1" dir
  dir="$(dir_of kafka "$n")"
  [ -f "$dir/data/meta.properties" ] || kafka_prepare
  # shellcheck disable=SC2086
  setsid nohup "$(kafka_java)" $KAFKA_HEAP -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:TieredStopAtLevel=1 \
    -XX:CICompilerCount=2 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$KAFKA_HOME_DIR/log4j2.properties" -Dkafka.logs.dir="$dir" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" >>"$dir/kafka.out" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/pid"
}

# The client port opens only once the broker is unfenced, which needs an elected controller.
serving_kafka() { port_open "$(kafka_port "$1")"; }

health_kafka() {
  local n
  for n in "${NODES[@]}"; do serving_kafka "$n" || return 1; done
}

# --------------------------------------------------------------------------------------- rabbitmq
rmq_env() { # node command...
  local n="$1" dir
  shift
  dir="$(dir_of rabbitmq "$n")"
  env RABBITMQ_NODENAME="$(rmq_node "$n")" RABBITMQ_NODE_IP_ADDRESS=$HOST \
    RABBITMQ_NODE_PORT="$(rmq_port "$n")" RABBITMQ_DIST_PORT="$(rmq_dist_port "$n")" \
    ERL_EPMD_ADDRESS=$HOST RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -kernel net_ticktime 10" \
    RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" RABBITMQ_PID_FILE="$dir/pid" \
    "$@"
}

rmqctl() { local n="$1"; shift; rmq_env "$n" timeout 60 rabbitmqctl -q -n "$(rmq_node "$n")" "$@"; }

start_rabbitmq_node() {
  local n="$1" dir
  dir="$(dir_of rabbitmq "$n")"
  if port_open "$(rmq_dist_port "$n")"; then die "rabbitmq: distribution port $(rmq_dist_port "$n") is in use"; fi
  mkdir -p "$dir/mnesia" "$dir/log"
  cat >"$dir/rabbitmq.conf" <<EOF
# generated by scripts/cluster/cluster.sh (cluster profile, node $n of 3)
listeners.tcp.1 = $HOST:$(rmq_port "$n")
loopback_users = none
cluster_partition_handling = autoheal
log.console = false
log.file.level = info
EOF
  echo '[].' >"$dir/enabled_plugins"
  chown -R rabbitmq:rabbitmq "$dir" 2>/dev/null || true
  rm -f "$dir/pid"
  (cd /tmp && rmq_env "$n" setsid rabbitmq-server -detached </dev/null >>"$dir/start.out" 2>&1 9>&-)
  # -detached returns before the node wrote its pid file
  wait_until 60 "rabbitmq node $n to write its pid file" test -s "$dir/pid"
}

serving_rabbitmq() { port_open "$(rmq_port "$1")" && rmqctl "$1" await_startup --timeout 5 >/dev/null 2>&1; }

rabbitmq_join() { # form the cluster once: nodes 2 and 3 join node 1
  local n
  [ -f "$RUN_ROOT/rabbitmq/clustered" ] && return 0
  for n in 2 3; do
    rmqctl "$n" stop_app
    rmqctl "$n" join_cluster "$(rmq_node 1)"
    rmqctl "$n" start_app
  done
  touch "$RUN_ROOT/rabbitmq/clustered"
}

health_rabbitmq() { # every node sees all three running and no partition
  local n out
  for n in "${NODES[@]}"; do
    out="$(rmqctl "$n" cluster_status --formatter json 2>/dev/null)" || return 1
    printf '%s' "$out" | python3 -c 'import json, sys
d = json.load(sys.stdin)
sys.exit(0 if len(d["running_nodes"]) == 3 and not d.get("partitions") else 1)' || return 1
  done
}

stop_rabbitmq_node() {
  local n="$1" pid
  pid="$(node_pid rabbitmq "$n")"
  [ -n "$pid" ] || return 0
  kill -CONT "$pid" 2>/dev/null || true
  rmqctl "$n" stop "$(pidfile_of rabbitmq "$n")" >/dev/null 2>&1 || true
  if kill -0 "$pid" 2>/dev/null; then stop_pid "$pid" 20; fi
}

# ------------------------------------------------------------------------------------------- nats
start_nats_node() {
  local n="$1" dir routes="" m
  dir="$(dir_of nats "$n")"
  mkdir -p "$dir/store"
  for m in "${NODES[@]}"; do routes+="${routes:+, }nats://$HOST:$(nats_route_port "$m")"; done
  cat >"$dir/nats.conf" <<EOF
# generated by scripts/cluster/cluster.sh (cluster profile, node $n of 3)
server_name: n$n
listen: $HOST:$(nats_port "$n")
http: $HOST:$(nats_http_port "$n")
pid_file: "$dir/pid"
log_file: "$dir/nats.log"
jetstream {
  store_dir: "$dir/store"
  max_memory_store: 64MB
  max_file_store: 2GB
}
cluster {
  name: dispytch
  listen: $HOST:$(nats_route_port "$n")
  routes: [$routes]
}
EOF
  setsid nohup nats-server -c "$dir/nats.conf" >>"$dir/nats.out" 2>&1 </dev/null 9>&- &
  echo $! >"$dir/pid"
}

nats_jsz() { curl -fsS --max-time 3 "http://$HOST:$(nats_http_port "$1")/jsz" 2>/dev/null; }

serving_nats() { # JetStream on this node knows the meta leader
  nats_jsz "$1" | python3 -c 'import json, sys
d = json.load(sys.stdin)
meta = d.get("meta_cluster") or {}
sys.exit(0 if meta.get("leader") else 1)'
}

health_nats() { # every node sees a meta leader and 3 peers
  local n
  for n in "${NODES[@]}"; do
    nats_jsz "$n" | python3 -c 'import json, sys
d = json.load(sys.stdin)
meta = d.get("meta_cluster") or {}
sys.exit(0 if meta.get("leader") and meta.get("cluster_size") == 3 else 1)' || return 1
  done
}

# ------------------------------------------------------------------------------------------ redis
start_redis_node() {
  local n="$1" dir port
  case "$n" in s*) start_sentinel "${n#s}"; return ;; esac
  dir="$(dir_of redis "$n")"
  port="$(redis_port "$n")"
  mkdir -p "$dir"
  local role=()
  # First start: nodes 2 and 3 replicate node 1. Later starts: Sentinel rewrote redis.conf.
  if [ ! -f "$dir/redis.conf" ]; then
    {
      echo "# generated by scripts/cluster/cluster.sh (cluster profile, redis node $n)"
      echo "bind $HOST"
      echo "port $port"
      echo "dir $dir"
      echo "appendonly yes"
      echo "appendfsync everysec"
      echo "save \"\""
      echo "repl-diskless-sync yes"
      echo "repl-diskless-sync-delay 0"
      echo "replica-announce-ip $HOST"
      [ "$n" != 1 ] && echo "replicaof $HOST $(redis_port 1)"
    } >"$dir/redis.conf"
  else
    # A node that was master when it died must come back as a replica of the current master,
    # never as a second master (Sentinel would correct it, but only after its data diverged).
    local master
    master="$(redis_master_port 2>/dev/null || true)"
    if [ -n "$master" ] && [ "$master" != "$port" ]; then role=(--replicaof "$HOST" "$master"); fi
  fi
  redis-server "$dir/redis.conf" --daemonize yes --pidfile "$dir/pid" --logfile "$dir/redis.log" \
    "${role[@]}" >/dev/null 9>&-
}

start_sentinel() {
  local i="$1" dir
  dir="$(dir_of redis "s$i")"
  mkdir -p "$dir"
  if [ ! -f "$dir/sentinel.conf" ]; then
    cat >"$dir/sentinel.conf" <<EOF
# generated by scripts/cluster/cluster.sh (cluster profile, sentinel $i); Sentinel rewrites it
bind $HOST
port $(sentinel_port "$i")
dir $dir
sentinel announce-ip $HOST
sentinel monitor $REDIS_MASTER_NAME $HOST $(redis_port 1) 2
sentinel down-after-milliseconds $REDIS_MASTER_NAME 2000
sentinel failover-timeout $REDIS_MASTER_NAME 10000
sentinel parallel-syncs $REDIS_MASTER_NAME 1
EOF
  fi
  redis-server "$dir/sentinel.conf" --sentinel --daemonize yes --pidfile "$dir/pid" \
    --logfile "$dir/sentinel.log" >/dev/null 9>&-
}

redis_cli() { timeout 5 redis-cli -h $HOST -p "$1" "${@:2}" 2>/dev/null | tr -d '\r'; }

redis_master_port() { # the master's port according to the first Sentinel that answers
  local i out
  for i in 1 2 3; do
    out="$(redis_cli "$(sentinel_port "$i")" sentinel get-master-addr-by-name $REDIS_MASTER_NAME | sed -n 2p)"
    if [ -n "$out" ]; then echo "$out"; return 0; fi
  done
  return 1
}

serving_redis() { # node -> answers PING (a replica: also in sync with its master)
  local n="$1" port info
  case "$n" in s*) [ "$(redis_cli "$(sentinel_port "${n#s}")" ping)" = PONG ]; return ;; esac
  port="$(redis_port "$n")"
  info="$(redis_cli "$port" info replication)" || return 1
  case "$info" in
    *role:master*) return 0 ;;
    *master_link_status:up*) return 0 ;;
    *) return 1 ;;
  esac
}

health_redis() { # Sentinels agree on a master whose two replicas are in sync, and see each other
  local master out
  master="$(redis_master_port)" || return 1
  out="$(redis_cli "$(sentinel_port 1)" sentinel master $REDIS_MASTER_NAME)"
  printf '%s\n' "$out" | grep -A1 -x 'num-other-sentinels' | tail -n1 | grep -qx 2 || return 1
  printf '%s\n' "$out" | grep -A1 -x 'num-slaves' | tail -n1 | grep -qx 2 || return 1
  [ "$(redis_cli "$master" info replication | grep -c 'state=online')" = 2 ] || return 1
}

# ---------------------------------------------------------------------------------------- per node
start_node() { # name node
  local name="$1" n="$2"
  if [ -n "$(node_pid "$name" "$n")" ]; then return 0; fi
  case "$name" in
    kafka) start_kafka_node "$n" ;;
    rabbitmq) start_rabbitmq_node "$n" ;;
    nats) start_nats_node "$n" ;;
    redis) start_redis_node "$n" ;;
  esac
}

stop_node() { # name node
  local name="$1" n="$2" pid
  pid="$(node_pid "$name" "$n")"
  [ -n "$pid" ] || return 0
  case "$name" in
    rabbitmq) stop_rabbitmq_node "$n" ;;
    kafka) stop_pid "$pid" 45 ;;
    *) stop_pid "$pid" 20 ;;
  esac
  rm -f "$(pidfile_of "$name" "$n")"
}

wait_serving() { # name node
  local pid
  wait_until "$TIMEOUT" "$1 node $2 to serve" "serving_$1" "$2" || {
    pid="$(node_pid "$1" "$2")"
    [ -n "$pid" ] || log "$1 node $2 is not running (logs in $(dir_of "$1" "$2"))" >&2
    return 1
  }
}

# ------------------------------------------------------------------------------------------ driver
cmd_up_one() { # name: start every node in parallel, form the cluster, wait until healthy
  local name="$1" t0 n
  t0="$(now)"
  mkdir -p "$RUN_ROOT/$name"
  [ "$name" = kafka ] && kafka_prepare
  for n in $(nodes_of "$name"); do start_node "$name" "$n"; done
  [ "$name" = rabbitmq ] && { for n in "${NODES[@]}"; do wait_serving rabbitmq "$n"; done; rabbitmq_join; }
  wait_until "$TIMEOUT" "the $name cluster to be healthy" "health_$name" || return 1
  log "$name: healthy in $(elapsed "$t0")s ($(describe "$name"))"
}

describe() {
  case "$1" in
    kafka) echo "3 brokers+controllers, clients at $(urls kafka)" ;;
    rabbitmq) echo "3 nodes running, $(urls rabbitmq | sed 's/guest:guest@//')" ;;
    nats) echo "3 nodes, JetStream meta leader elected, $(urls nats)" ;;
    redis) echo "master :$(redis_master_port) + 2 replicas in sync, 3 Sentinels" ;;
  esac
}

urls() {
  local n out=""
  case "$1" in
    kafka) for n in "${NODES[@]}"; do out+="${out:+,}$HOST:$(kafka_port "$n")"; done; echo "kafka://$out" ;;
    rabbitmq) for n in "${NODES[@]}"; do out+="${out:+,}$HOST:$(rmq_port "$n")"; done; echo "amqp://guest:guest@$out/" ;;
    nats) for n in "${NODES[@]}"; do out+="${out:+,}$HOST:$(nats_port "$n")"; done; echo "nats://$out" ;;
    redis) for n in 1 2 3; do out+="${out:+,}$HOST:$(sentinel_port "$n")"; done; echo "redis+streams://$out/0?sentinel=$REDIS_MASTER_NAME" ;;
  esac
}

parse_names() {
  NAMES=()
  local n
  if [ "$#" -eq 0 ]; then NAMES=("${ALL[@]}"); return; fi
  for n in "$@"; do valid_name "$n" || die "unknown cluster '$n' (expected: ${ALL[*]})"; NAMES+=("$n"); done
}

cmd_up() {
  parse_names "$@"
  local t0 name rc=0 pids=()
  t0="$(now)"
  mkdir -p "$RUN_ROOT"
  for name in "${NAMES[@]}"; do
    ( cmd_up_one "$name" 2>&1 | sed -u "s/^/[$name] /"; exit "${PIPESTATUS[0]}" ) &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  if [ "$rc" -eq 0 ]; then log "up: ${NAMES[*]} healthy, total $(elapsed "$t0")s"; else log "up: FAILED after $(elapsed "$t0")s (logs under $RUN_ROOT)"; fi
  return "$rc"
}

cmd_down() {
  parse_names "$@"
  local name n t0 pids=()
  t0="$(now)"
  for name in "${NAMES[@]}"; do
    for n in $(nodes_of "$name"); do ( stop_node "$name" "$n" ) & pids+=($!); done
  done
  for p in "${pids[@]}"; do wait "$p" || true; done
  if [[ " ${NAMES[*]} " == *" rabbitmq "* ]] && [ -f "$RUN_ROOT/rabbitmq/epmd.ours" ]; then
    if ! epmd -names 2>/dev/null | grep -q '^name '; then epmd -kill >/dev/null 2>&1 || true; fi
    rm -f "$RUN_ROOT/rabbitmq/epmd.ours"
  fi
  log "down: ${NAMES[*]} stopped in $(elapsed "$t0")s"
}

cmd_status() {
  local name n state pid
  printf '%-9s %-4s %-8s %-8s %s\n' CLUSTER NODE STATE PID PORT
  for name in "${ALL[@]}"; do
    for n in $(nodes_of "$name"); do
      state="$(node_state "$name" "$n")"
      pid="$(node_pid "$name" "$n")"
      printf '%-9s %-4s %-8s %-8s %s\n' "$name" "$n" "$state" "${pid:--}" "$HOST:$(port_of "$name" "$n")"
    done
  done
}

cmd_node() { # action name node
  local action="$1" name="${2:-}" n="${3:-}" pid
  valid_name "$name" || die "usage: $0 $action kafka|rabbitmq|nats|redis NODE"
  valid_node "$name" "$n" || die "$name has nodes: $(nodes_of "$name")"
  pid="$(node_pid "$name" "$n")"
  case "$action" in
    pid) echo "$pid" ;;
    kill)
      [ -n "$pid" ] || die "$name node $n is not running"
      kill -KILL "$pid"
      wait_until 10 "pid $pid to exit" bash -c "! kill -0 $pid"
      # the next start must not mistake the dead node's pid file for a live one
      rm -f "$(pidfile_of "$name" "$n")"
      ;;
    pause) [ -n "$pid" ] || die "$name node $n is not running"; kill -STOP "$pid" ;;
    resume) [ -n "$pid" ] || die "$name node $n is not running"; kill -CONT "$pid" ;;
    start)
      local t0
      t0="$(now)"
      start_node "$name" "$n"
      wait_serving "$name" "$n"
      log "$name node $n: serving in $(elapsed "$t0")s"
      ;;
    stop) stop_node "$name" "$n" ;;
  esac
}

lock() {
  mkdir -p "$RUN_ROOT"
  exec 9>"$RUN_ROOT/.lock"
  flock -w 600 9 || die "could not get the lock $RUN_ROOT/.lock"
}

main() {
  local cmd="${1:-}"
  [ "$#" -gt 0 ] && shift
  case "$cmd" in up | down | clean | start | stop) lock ;; esac
  case "$cmd" in
    up)
      if ! port_open "$EPMD_PORT"; then mkdir -p "$RUN_ROOT/rabbitmq" && touch "$RUN_ROOT/rabbitmq/epmd.ours"; fi
      cmd_up "$@"
      ;;
    down | stop-all) cmd_down "$@" ;;
    clean) cmd_down; find "$RUN_ROOT" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +; log "wiped $RUN_ROOT" ;;
    status) cmd_status ;;
    health) valid_name "${1:-}" || die "usage: $0 health NAME"; "health_$1" ;;
    urls) for n in "${ALL[@]}"; do printf '%-9s %s\n' "$n" "$(urls "$n")"; done ;;
    url) valid_name "${1:-}" || die "usage: $0 url NAME"; urls "$1" ;;
    kill | pause | resume | start | stop | pid) cmd_node "$cmd" "$@" ;;
    rabbitmqctl | rabbitmq-queues) # the CLI on the first node that serves
      local n tool="$cmd"
      for n in "${NODES[@]}"; do
        if [ "$(node_state rabbitmq "$n")" = up ]; then
          rmq_env "$n" timeout 60 "$tool" -q -n "$(rmq_node "$n")" "$@"
          return
        fi
      done
      die "no rabbitmq node is up"
      ;;
    -h | --help | help) sed -n '2,30p' "$SELF" | sed 's/^# \{0,1\}//' ;;
    *) sed -n '2,15p' "$SELF" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
}

main "$@"
