#!/usr/bin/env bash
# Runs Sluice locally: installs prerequisites, starts a local Kafka broker (or uses the reachable
# one named by SLUICE__KAFKA__BROKERS), then runs the service with settings.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/target}"
scripts/setup.sh
SLUICE_KAFKA_BROKERS="${SLUICE__KAFKA__BROKERS:-127.0.0.1:9092}" scripts/kafka.sh start
exec cargo run --locked --release --bin sluice -- --config settings.toml "$@"
