#!/usr/bin/env bash
# Runs a command against a live Sluice: starts the built binary with throw-away topics and store
# on a free port, waits for /readyz, exports SLUICE_URL and SLUICE_TOKEN, runs the command, stops
# Sluice. The broker must be running (scripts/kafka.sh start); the binary must be built.
#
#   scripts/with-sluice.sh npm --prefix clients/typescript test
#
# Environment: SLUICE_BIN (default: the debug build), SLUICE_TEST_BROKERS, SLUICE_WITH_LOG (a file
# that keeps Sluice's log), SLUICE_WITH_EXTRA (TOML appended to the settings), SLUICE_WITH_OPEN=1
# (no API token: every request is allowed).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/target}"
BIN="${SLUICE_BIN:-$TARGET/debug/sluice}"
BROKERS="${SLUICE_TEST_BROKERS:-127.0.0.1:9092}"
[[ -x "$BIN" ]] || { echo "with-sluice.sh: no sluice binary at $BIN (cargo build first)" >&2; exit 1; }
(($#)) || { echo "with-sluice.sh: usage: with-sluice.sh <command…>" >&2; exit 2; }

DIR=$(mktemp -d)
TAG="w$(date +%s%N | tail -c 10)$$"
TOKEN="token-$TAG"
LOG="${SLUICE_WITH_LOG:-$DIR/sluice.log}"
cat >"$DIR/settings.toml" <<TOML
[http]
listen = "127.0.0.1:0"
[grpc]
listen = "127.0.0.1:0"
[kafka]
brokers = "$BROKERS"
stream_topic_prefix = "sluice.with.$TAG.stream."
[intake]
topic = "sluice.with.$TAG.requests"
dlq_topic = "sluice.with.$TAG.dlq"
group_id = "sluice-with-$TAG"
topic_partitions = 1
[provider]
heartbeat_interval = "200ms"
[edge]
$([[ "${SLUICE_WITH_OPEN:-0}" == 1 ]] || echo "api_tokens = [\"$TOKEN\"]")
sse_retry = "250ms"
[store]
path = "$DIR/db"
[log]
format = "json"
level = "info"
[shutdown]
grace_period = "5s"
${SLUICE_WITH_EXTRA:-}
TOML

# Durable Streams topics go under the run's prefix too, so the cleanup below removes them.
SLUICE__DURABLE__TOPIC_PREFIX="sluice.with.$TAG.ds." "$BIN" --config "$DIR/settings.toml" >"$LOG" 2>&1 &
PID=$!
# The run's topics go too (a conformance run creates hundreds); best effort.
cleanup() {
  kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; rm -rf "$DIR"
  SLUICE_KAFKA_BROKERS="$BROKERS" scripts/kafka.sh delete-prefix "sluice.with.$TAG." 2>/dev/null || true
}
trap cleanup EXIT

ADDR=""
for _ in $(seq 1 300); do
  kill -0 "$PID" 2>/dev/null || { echo "with-sluice.sh: sluice exited; log:" >&2; tail -40 "$LOG" >&2; exit 1; }
  ADDR=$(sed -n 's/.*"message":"sluice is running".*"addr":"\([^"]*\)".*/\1/p' "$LOG" | head -1)
  [[ -n "$ADDR" ]] && break
  sleep 0.1
done
[[ -n "$ADDR" ]] || { echo "with-sluice.sh: sluice did not start; log:" >&2; tail -40 "$LOG" >&2; exit 1; }
GRPC=$(sed -n 's/.*"message":"sluice is running".*"grpc":"\([^"]*\)".*/\1/p' "$LOG" | head -1)
for _ in $(seq 1 300); do
  curl -fsS "http://$ADDR/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://$ADDR/readyz" >/dev/null || { echo "with-sluice.sh: sluice never became ready" >&2; exit 1; }

export SLUICE_URL="http://$ADDR" SLUICE_TOKEN="$TOKEN" SLUICE_GRPC="$GRPC"
echo "with-sluice.sh: sluice at $SLUICE_URL (grpc ${GRPC:-none})" >&2
"$@"
