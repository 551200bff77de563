#!/usr/bin/env bash
# The one test command: installs prerequisites, starts a local Kafka broker (or uses a reachable
# one), then runs every unit and integration test against it.
#   scripts/test.sh                 # everything
#   scripts/test.sh --test pipeline # extra arguments go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/target}"
export SLUICE_TEST_BROKERS="${SLUICE_TEST_BROKERS:-${SLUICE_KAFKA_BROKERS:-127.0.0.1:9092}}"
scripts/setup.sh
SLUICE_KAFKA_BROKERS="$SLUICE_TEST_BROKERS" scripts/kafka.sh start
cargo test --locked "$@"
