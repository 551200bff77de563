#!/usr/bin/env bash
# Live dashboard check: runs Sluice against the broker under a little load of every kind
# (success, failure, panic, timeout, SSE replay), scrapes it with Debian's Prometheus, checks the
# scrape with `promtool check metrics`, and evaluates every dashboard expression through
# Prometheus's HTTP API. Fails on any expression that errors or returns no series.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/target}"
BROKERS="${SLUICE_TEST_BROKERS:-127.0.0.1:9092}"
say() { echo "check-dashboards: $*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Same feature set as `cargo test`, so the build is shared with the test run.
cargo test --locked --quiet --no-run 2>/dev/null || cargo test --locked --no-run
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

tag="dash$(date +%s)$$"
sport=$(free_port); pport=$(free_port)
cat >"$work/settings.toml" <<TOML
[http]
listen = "127.0.0.1:$sport"
[grpc]
listen = "127.0.0.1:0"
[kafka]
brokers = "$BROKERS"
stream_topic_prefix = "sluice.check.$tag.stream."
[intake]
topic = "sluice.check.$tag.requests"
dlq_topic = "sluice.check.$tag.dlq"
group_id = "sluice-check-$tag"
topic_partitions = 1
[provider]
stream_timeout = "3s"
[store]
path = "$work/db"
[log]
format = "json"
TOML
"$CARGO_TARGET_DIR/debug/sluice" --config "$work/settings.toml" >"$work/sluice.log" 2>&1 &
pids+=($!)
base="http://127.0.0.1:$sport"
for _ in $(seq 1 300); do curl -fs "$base/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fs "$base/readyz" >/dev/null || { say "sluice never became ready"; tail -20 "$work/sluice.log" >&2; exit 1; }

post() { curl -fs -XPOST "$base/v1/streams" -d "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["stream_id"])'; }
ok=$(post '{"type":"demo:stream_ticks:v1:requested","payload":{"count":20,"interval_ms":50}}')
post '{"type":"demo:stream_ticks:v1:requested","payload":{"count":5,"interval_ms":10,"fail_at":2}}' >/dev/null
post '{"type":"demo:stream_ticks:v1:requested","payload":{"count":5,"interval_ms":10,"panic_at":2}}' >/dev/null
long=$(post '{"type":"demo:stream_ticks:v1:requested","payload":{"count":100000,"interval_ms":100}}')
curl -s -o /dev/null -XPOST "$base/v1/streams" -d '{not json' || true
curl -sN "$base/v1/streams/$long/events" >/dev/null &
pids+=($!)
curl -sN "$base/v1/streams/$ok/events" >/dev/null

curl -fs "$base/metrics" >"$work/scrape.txt"
promtool check metrics <"$work/scrape.txt"
say "promtool check metrics: ok"

cat >"$work/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: sluice
    static_configs: [{targets: ["127.0.0.1:$sport"]}]
YML
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prom" \
  --web.listen-address="127.0.0.1:$pport" >"$work/prometheus.log" 2>&1 &
pids+=($!)
# Keep a little traffic flowing while Prometheus collects samples.
( for i in $(seq 1 20); do post '{"type":"demo:stream_ticks:v1:requested","payload":{"count":3,"interval_ms":20}}' >/dev/null || true; sleep 1; done ) &
pids+=($!)
python3 scripts/check_dashboards.py --prometheus "http://127.0.0.1:$pport" --wait 90 dashboards/sluice.json
