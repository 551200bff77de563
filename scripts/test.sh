#!/usr/bin/env bash
# The one test command: installs prerequisites, starts a local Kafka broker (or uses a reachable
# one), runs every unit and integration test against it (gRPC through tonic and grpcurl included),
# then the TypeScript client's tests and the browser tests (Debian's Chromium driven by
# playwright-core) against a live Sluice, the official Durable Streams conformance suite (npm,
# pinned in tests/conformance) against a live Sluice, the benchmark harness in its seconds-long
# smoke mode, a fuzz smoke run of every sluice-wire decoder (scripts/fuzz.sh), the live dashboard
# check (Prometheus + promtool) and the offline docker/dashboard checks.
#   scripts/test.sh                  # everything
#   scripts/test.sh --test pipeline  # only `cargo test` with these arguments
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/target}"
export SLUICE_TEST_BROKERS="${SLUICE_TEST_BROKERS:-${SLUICE_KAFKA_BROKERS:-127.0.0.1:9092}}"
# Installs what is missing, then fails naming any prerequisite that is still absent. Never skips.
scripts/setup.sh
# Tests create throw-away topics; a broker this script starts begins from empty storage.
SLUICE_KAFKA_FRESH=1 SLUICE_KAFKA_BROKERS="$SLUICE_TEST_BROKERS" scripts/kafka.sh start
if (($#)); then
  exec cargo test --locked "$@"
fi
# --workspace: the sluice-wire crate's unit and property tests too.
cargo test --locked --workspace
# The client suites run against the binary cargo test just built, started by with-sluice.sh.
echo "== TypeScript client (tsc --noEmit, node --test) against a live Sluice"
(cd clients/typescript && npm ci --no-audit --no-fund)
scripts/with-sluice.sh npm --prefix clients/typescript test
echo "== browser tests (Chromium + playwright-core) against a live Sluice"
(cd tests/browser && npm ci --no-audit --no-fund)
# The CORS test serves a page on this port: its 127.0.0.1 origin is allowed, its localhost one not.
CORS_PAGE_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CORS_PAGE_PORT=$CORS_PAGE_PORT SLUICE__EDGE__CORS_ALLOWED_ORIGINS="http://127.0.0.1:$CORS_PAGE_PORT" \
  scripts/with-sluice.sh npm --prefix tests/browser test
echo "== Durable Streams conformance suite (@durable-streams/server-conformance-tests) against a live Sluice"
(cd tests/conformance && npm ci --no-audit --no-fund)
SLUICE_WITH_OPEN=1 SLUICE_WITH_EXTRA=$'[durable]\nlong_poll_timeout = "500ms"\nwebhook_allow_localhost = true' \
  scripts/with-sluice.sh npm --prefix tests/conformance test
echo "== benchmark harness smoke runs (no speed assertions)"
cargo test --locked --bench e2e -- --quick
cargo test --locked --bench sources -- --quick
cargo test --locked --bench surfaces -- --quick
cargo test --locked --bench cluster -- --quick
cargo test --locked --bench durable -- --quick
echo "== fuzz smoke (each target ~30 s from the committed corpus)"
scripts/fuzz.sh 30
echo "== live dashboard check"
scripts/check-dashboards.sh
echo "== docker and dashboard structure"
python3 scripts/check_docker.py
python3 scripts/check_dashboards.py --self-test dashboards/sluice.json
