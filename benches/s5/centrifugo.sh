#!/usr/bin/env bash
# Centrifugo v6.9.1 helper for the S5 memory-per-connection benchmark.
#
#   benches/s5/centrifugo.sh install            build/install Centrifugo 6.9.1, print binary path
#   benches/s5/centrifugo.sh config DIR PORT    write DIR/config.json, print the uni_sse URL
#   benches/s5/centrifugo.sh run DIR            exec Centrifugo with DIR/config.json (foreground)
#   benches/s5/centrifugo.sh url PORT           print the uni_sse URL for PORT
#   benches/s5/centrifugo.sh publish PORT       publish one small JSON message to the channel
#
# The config runs the memory engine with the unidirectional SSE transport
# (uni_sse). An anonymous client (no JWT) connecting to /connection/uni_sse with
# cf_connect={"subs":{"bench":{}}} is accepted and server-side subscribed to the
# channel "bench" (client.allow_anonymous_connect_without_token plus
# channel.without_namespace.allow_subscribe_for_client/_for_anonymous).
set -euo pipefail

CF_VERSION="6.9.1"
CF_MODULE="github.com/centrifugal/centrifugo/v6"
CF_BIN_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/sluice/bin"
CF_BIN="$CF_BIN_DIR/centrifugo"
CF_CHANNEL="${CF_CHANNEL:-bench}"
CF_API_KEY="${CF_API_KEY:-bench-api-key}"

die() {
  echo "centrifugo.sh: $*" >&2
  exit 1
}

usage() {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

check_port() {
  [[ "${1:-}" =~ ^[0-9]+$ ]] && (( $1 > 0 && $1 < 65536 )) || die "bad PORT '${1:-}'"
}

have_right_version() {
  [[ -x "$CF_BIN" ]] || return 1
  local out
  out="$("$CF_BIN" version 2>/dev/null)" || return 1
  [[ "$out" == *"v$CF_VERSION "* || "$out" == *"v$CF_VERSION" ]]
}

cmd_install() {
  if ! have_right_version; then
    command -v go >/dev/null 2>&1 \
      || die "'go' is not on PATH; install a Go toolchain (>= 1.26, per its go.mod) to build Centrifugo $CF_VERSION"
    mkdir -p "$CF_BIN_DIR"
    echo "centrifugo.sh: building Centrifugo $CF_VERSION into $CF_BIN_DIR (takes a few minutes)" >&2
    # Same flags as the upstream release build (.goreleaser.yml): static,
    # stripped, version stamped (otherwise `centrifugo version` says v0.0.0).
    GOBIN="$CF_BIN_DIR" CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false" \
      go install -ldflags "-s -w -X $CF_MODULE/internal/build.Version=$CF_VERSION" \
      "$CF_MODULE@v$CF_VERSION" \
      || die "go install $CF_MODULE@v$CF_VERSION failed"
  fi
  local out
  out="$("$CF_BIN" version 2>&1)" || die "$CF_BIN does not run: $out"
  have_right_version || die "$CF_BIN reports '$out', expected v$CF_VERSION"
  echo "centrifugo.sh: $out" >&2
  echo "$CF_BIN"
}

uni_sse_url() {
  local port="$1"
  # cf_connect={"subs":{"<channel>":{}}}, percent-encoded.
  printf 'http://127.0.0.1:%s/connection/uni_sse?cf_connect=%%7B%%22subs%%22%%3A%%7B%%22%s%%22%%3A%%7B%%7D%%7D%%7D\n' \
    "$port" "$CF_CHANNEL"
}

cmd_config() {
  local dir="${1:-}" port="${2:-}"
  [[ -n "$dir" ]] || usage
  check_port "$port"
  mkdir -p "$dir"
  cat >"$dir/config.json" <<EOF
{
  "http_server": {
    "address": "127.0.0.1",
    "port": $port
  },
  "log": {
    "level": "warn"
  },
  "engine": {
    "type": "memory"
  },
  "usage_stats": {
    "disabled": true
  },
  "admin": {
    "enabled": false
  },
  "prometheus": {
    "enabled": false
  },
  "http_api": {
    "key": "$CF_API_KEY"
  },
  "uni_sse": {
    "enabled": true
  },
  "client": {
    "allow_anonymous_connect_without_token": true
  },
  "channel": {
    "without_namespace": {
      "allow_subscribe_for_client": true,
      "allow_subscribe_for_anonymous": true
    }
  }
}
EOF
  echo "centrifugo.sh: wrote $dir/config.json (channel '$CF_CHANNEL', API key '$CF_API_KEY')" >&2
  uni_sse_url "$port"
}

cmd_run() {
  local dir="${1:-}"
  [[ -n "$dir" && -f "$dir/config.json" ]] || die "run: no config.json in '${dir}' (use: config DIR PORT)"
  [[ -x "$CF_BIN" ]] || die "run: $CF_BIN missing (use: install)"
  exec "$CF_BIN" --config "$dir/config.json"
}

cmd_publish() {
  local port="${1:-}"
  check_port "$port"
  local body
  body="$(printf '{"channel":"%s","data":{"t":%s}}' "$CF_CHANNEL" "$(date +%s%N)")"
  local reply
  reply="$(curl -sS --fail-with-body -m 5 -X POST \
    -H "Content-Type: application/json" -H "X-API-Key: $CF_API_KEY" \
    --data "$body" "http://127.0.0.1:$port/api/publish")" \
    || die "publish failed: ${reply:-no reply}"
  # A Centrifugo API error comes back as HTTP 200 with an "error" member.
  [[ "$reply" != *'"error"'* ]] || die "publish failed: $reply"
  echo "$reply"
}

main() {
  local sub="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$sub" in
    install) cmd_install "$@" ;;
    config) cmd_config "$@" ;;
    run) cmd_run "$@" ;;
    url) check_port "${1:-}"; uni_sse_url "$1" ;;
    publish) cmd_publish "$@" ;;
    *) usage ;;
  esac
}

main "$@"
