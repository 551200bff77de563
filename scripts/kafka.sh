#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft) on loopback, for development and tests.
#
#   scripts/kafka.sh start    # idempotent: reuse a reachable broker, or fetch jars, format and start one
#   scripts/kafka.sh stop     # stop the broker this script started
#   scripts/kafka.sh status   # exit 0 when the broker answers
#   scripts/kafka.sh reset    # stop and wipe the broker's data (jars stay cached)
#   scripts/kafka.sh delete-prefix P  # delete every topic whose name starts with P
#
# Environment:
#   SLUICE_KAFKA_BROKERS   bootstrap address to use or start (default 127.0.0.1:9092)
#   KAFKA_VERSION          Apache Kafka version from Maven Central (default 4.1.1)
#   KAFKA_HEAP_OPTS        JVM heap bounds (default -Xms256m -Xmx1g)
#   SLUICE_CACHE_DIR       where jars, data and the broker log live (default ~/.cache/sluice)
#   SLUICE_KAFKA_FRESH=1   when a new broker is started, wipe its old data first (tests use this)
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
SCALA_VERSION="2.13"
BROKERS="${SLUICE_KAFKA_BROKERS:-127.0.0.1:9092}"
HOST="${BROKERS%%,*}"; HOST="${HOST%:*}"
PORT="${BROKERS%%,*}"; PORT="${PORT##*:}"
CONTROLLER_PORT="${SLUICE_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
CACHE="${SLUICE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice}"
JARS="$CACHE/kafka-$KAFKA_VERSION/libs"
RUN="$CACHE/kafka-run-$PORT"
LOG="$RUN/broker.log"
PID="$RUN/broker.pid"
HEAP="${KAFKA_HEAP_OPTS:--Xms256m -Xmx1g}"

say() { echo "kafka.sh: $*" >&2; }

reachable() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

# The broker JVMs of this run directory, found by their command line (not by a wrapper's pid).
broker_pids() { pgrep -f "kafka.Kafka $RUN/server.properties" 2>/dev/null || true; }

running_pid() {
  local p
  p=$(broker_pids | head -1)
  [[ -n "$p" ]] && echo "$p"
}

fetch_jars() {
  if [[ -f "$JARS/.complete" ]]; then return 0; fi
  command -v mvn >/dev/null || { say "mvn is required to fetch Kafka's jars"; exit 1; }
  command -v java >/dev/null || { say "java (17+) is required to run Kafka"; exit 1; }
  say "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $JARS"
  local work="$CACHE/kafka-$KAFKA_VERSION"
  mkdir -p "$work"
  cat >"$work/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>sluice.local</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_$SCALA_VERSION</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
  rm -rf "$JARS"
  mvn -B -q -f "$work/pom.xml" dependency:copy-dependencies \
    -DoutputDirectory="$JARS" -DincludeScope=runtime >"$work/mvn.log" 2>&1 \
    || { say "maven failed; see $work/mvn.log"; tail -20 "$work/mvn.log" >&2; exit 1; }
  touch "$JARS/.complete"
}

write_config() {
  mkdir -p "$RUN/data"
  cat >"$RUN/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$RUN/data
num.partitions=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
log.retention.check.interval.ms=60000
PROPS
  cat >"$RUN/log4j2.properties" <<L4J
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $LOG
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
L4J
}

java_run() {
  # shellcheck disable=SC2086
  java $HEAP -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
    -cp "$JARS/*" "$@"
}

start() {
  if reachable; then say "broker already reachable at $HOST:$PORT; using it"; return 0; fi
  if p=$(running_pid); then say "broker process $p exists but $HOST:$PORT does not answer yet"; fi
  command -v pgrep >/dev/null || { say "pgrep (procps) is required; run scripts/setup.sh"; exit 1; }
  fetch_jars
  if [[ "${SLUICE_KAFKA_FRESH:-0}" == 1 ]] && ! running_pid >/dev/null; then
    say "SLUICE_KAFKA_FRESH=1: starting from empty storage"
    rm -rf "$RUN/data"
  fi
  write_config
  if [[ ! -f "$RUN/data/meta.properties" ]]; then
    say "formatting storage in $RUN/data"
    java_run kafka.tools.StorageTool format --standalone=false -t "sluice-local-$PORT" \
      -c "$RUN/server.properties" >"$RUN/format.log" 2>&1 \
      || java_run kafka.tools.StorageTool format -t "sluice-local-$PORT" \
        -c "$RUN/server.properties" >"$RUN/format.log" 2>&1 \
      || { say "storage format failed:"; cat "$RUN/format.log" >&2; exit 1; }
  fi
  if ! running_pid >/dev/null; then
    say "starting Kafka $KAFKA_VERSION on $HOST:$PORT (log: $LOG)"
    : >"$LOG"
    # shellcheck disable=SC2086
    nohup java $HEAP -XX:+UseG1GC -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
      -cp "$JARS/*" kafka.Kafka "$RUN/server.properties" >"$RUN/stdout.log" 2>&1 &
    echo $! >"$PID"
  fi
  local deadline=$((SECONDS + ${KAFKA_START_TIMEOUT:-120}))
  until reachable && grep -q "Kafka Server started" "$LOG" 2>/dev/null; do
    # The process we started is the authority; pgrep covers a broker started by an earlier call.
    if [[ -z "$(broker_pids)" ]] && ! kill -0 "$(cat "$PID" 2>/dev/null)" 2>/dev/null; then
      say "broker exited during start-up; last lines:"; tail -n 30 "$RUN/stdout.log" "$LOG" >&2 || true; exit 1
    fi
    if (( SECONDS > deadline )); then say "broker did not answer within the timeout"; tail -n 30 "$LOG" >&2; exit 1; fi
    sleep 0.5
  done
  say "broker ready at $HOST:$PORT"
}

stop() {
  local pids
  pids=$(broker_pids)
  if [[ -n "$pids" ]]; then
    say "stopping broker (pid $(echo $pids))"
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    local deadline=$((SECONDS + ${KAFKA_STOP_TIMEOUT:-60}))
    while [[ -n "$(broker_pids)" ]] && ((SECONDS < deadline)); do sleep 0.2; done
    pids=$(broker_pids)
    if [[ -n "$pids" ]]; then
      say "broker did not stop within the timeout; killing it"
      # shellcheck disable=SC2086
      kill -KILL $pids 2>/dev/null || true
      while [[ -n "$(broker_pids)" ]]; do sleep 0.1; done
    fi
  fi
  # The process is gone; wait for the kernel to release the listener too, so a restart cannot race it.
  local deadline=$((SECONDS + 30))
  while reachable && ((SECONDS < deadline)); do sleep 0.2; done
  if reachable; then say "something still answers on $HOST:$PORT after stop"; exit 1; fi
  rm -f "$PID"
}

# Deletes the topics named P*, with Kafka's own topic tool (regex match, dots escaped).
delete_prefix() {
  local prefix="${1:-}"
  [[ -n "$prefix" ]] || { say "delete-prefix needs a prefix"; exit 2; }
  fetch_jars
  local pattern
  pattern="$(printf '%s' "$prefix" | sed 's/[.]/\\./g').*"
  java -cp "$JARS/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$PORT" \
    --delete --if-exists --topic "$pattern" >/dev/null
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) if reachable; then say "reachable at $HOST:$PORT"; else say "not reachable at $HOST:$PORT"; exit 1; fi ;;
  reset) stop; rm -rf "$RUN" ;;
  delete-prefix) delete_prefix "${2:-}" ;;
  *) echo "usage: $0 start|stop|status|reset|delete-prefix P" >&2; exit 2 ;;
esac
