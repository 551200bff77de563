#!/usr/bin/env bash
# Installs what building and testing Sluice needs on a fresh Debian machine (idempotent).
# Rust (cargo), Java 17+ and Maven are expected; libclang (RocksDB's bindgen) and Prometheus
# (the dashboard check) come from Debian's packages.
set -euo pipefail
say() { echo "setup.sh: $*" >&2; }
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"

need=()
ldconfig -p 2>/dev/null | grep -q 'libclang' || dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)
command -v cmake >/dev/null || need+=(cmake)
command -v c++ >/dev/null || need+=(build-essential)
command -v prometheus >/dev/null || need+=(prometheus)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if ((${#need[@]})); then
  say "installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { say "cargo not found: install Rust from https://rustup.rs"; exit 1; }
say "ok"
