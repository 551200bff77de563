#!/usr/bin/env bash
# Installs, then verifies, everything that building, running and testing Sluice needs on a Debian
# machine. Idempotent. Each prerequisite is checked by what the build or a script really uses (an
# exact library file, a command, a Java major version), never by a substring of some other name.
#
#   scripts/setup.sh           # install what is missing, then verify; exit 1 naming what is absent
#   scripts/setup.sh --check   # verify only; never installs
#
# Rust (cargo) is expected from rustup; everything else comes from Debian's packages.
set -euo pipefail
say() { echo "setup.sh: $*" >&2; }
SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
MODE="${1:-install}"

# --- checks: each prints nothing and succeeds when the piece is really there -------------------

# bindgen (RocksDB's build) loads libclang by its unversioned development name, which only
# libclang-dev provides; libclang-cpp.so.N or libclang-N.so.1 alone do not satisfy it.
libclang_path() {
  local d f
  for d in ${LIBCLANG_PATH:-} /usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib/aarch64-linux-gnu /usr/lib /usr/local/lib; do
    for f in "$d"/libclang.so "$d"/libclang-[0-9]*.so; do
      [[ -e "$f" ]] && { echo "$f"; return 0; }
    done
  done
  return 1
}
# bindgen also needs clang's own headers (stddef.h) next to the library.
clang_headers() { compgen -G "/usr/lib/llvm-*/lib/clang/*/include/stddef.h" >/dev/null; }
java_major() {
  command -v java >/dev/null || return 1
  java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1
}
java_ok() { local v; v=$(java_major) && [[ -n "$v" ]] && ((v >= 17)); }
# Node 20.19+ or 22.12+: what the Durable Streams conformance suite's vite requires.
node_ok() {
  local v major minor
  v=$(node --version 2>/dev/null | sed -n 's/^v\([0-9]*\.[0-9]*\).*/\1/p')
  [[ -n "$v" ]] || return 1
  major=${v%.*}; minor=${v#*.}
  ((major == 20 && minor >= 19)) || ((major == 22 && minor >= 12)) || ((major >= 23))
}
# The browser tests drive Debian's Chromium; a test tool's own browser download is never used.
chromium_ok() { [[ -x /usr/bin/chromium ]] && /usr/bin/chromium --headless=new --no-sandbox --version >/dev/null 2>&1; }
# grpcurl, pinned, built from the Go module proxy into Go's bin directory.
GRPCURL_VERSION=v1.9.4
grpcurl_path() { echo "$(go env GOPATH 2>/dev/null)/bin/grpcurl"; }
grpcurl_ok() { command -v go >/dev/null && "$(grpcurl_path)" -help >/dev/null 2>&1; }
# Fuzzing (scripts/fuzz.sh): the nightly toolchain from rustup, and cargo-fuzz, pinned, from crates.io.
CARGO_FUZZ_VERSION=0.13.2
nightly_ok() { cargo +nightly --version >/dev/null 2>&1; }
cargo_fuzz_ok() { cargo fuzz --version >/dev/null 2>&1; }

# name | check | Debian package (JRE resolved later by what apt offers)
CHECKS=(
  "libclang (libclang.so for bindgen)|libclang_path >/dev/null && clang_headers|libclang-dev"
  "C/C++ compiler and make|command -v cc && command -v c++ && command -v make|build-essential"
  "pkg-config|command -v pkg-config|pkg-config"
  "curl|command -v curl|curl"
  "python3|command -v python3|python3"
  "pkill/pgrep (procps)|command -v pkill && command -v pgrep|procps"
  "Java 17+ runtime (Kafka broker)|java_ok|@jre"
  "Maven (fetches Kafka's jars)|command -v mvn|maven"
  "prometheus (dashboard check)|command -v prometheus|prometheus"
  "promtool (dashboard check)|command -v promtool|prometheus"
  "Node.js 20.19+ or 22.12+ (TypeScript client, browser tests, Durable Streams conformance)|node_ok|nodejs"
  "npm (TypeScript client and browser tests)|command -v npm|npm"
  "Chromium (browser tests)|chromium_ok|chromium"
  "Go (builds grpcurl)|command -v go|golang-go"
  "grpcurl $GRPCURL_VERSION (gRPC reflection test)|grpcurl_ok|@grpcurl"
)

missing() {
  local entry name check
  for entry in "${CHECKS[@]}"; do
    IFS='|' read -r name check _ <<<"$entry"
    eval "$check" >/dev/null 2>&1 || echo "$entry"
  done
}

# The newest OpenJDK runtime this release offers (17 is gone from some newer Debian releases).
pick_jre() {
  local p
  for p in openjdk-25-jre-headless openjdk-21-jre-headless openjdk-17-jre-headless default-jre-headless; do
    if apt-cache show "$p" >/dev/null 2>&1 && [[ -n "$(apt-cache policy "$p" | sed -n 's/ *Candidate: //p' | grep -v none)" ]]; then
      echo "$p"; return 0
    fi
  done
  return 1
}

install_missing() {
  local todo; todo=$(missing)
  [[ -z "$todo" ]] && return 0
  if [[ -z "$(grep -v '|@grpcurl$' <<<"$todo")" ]]; then
    say "building grpcurl $GRPCURL_VERSION with go install"
    go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
    return 0
  fi
  command -v apt-get >/dev/null || { say "apt-get not found: install these by hand:"; echo "$todo" | cut -d'|' -f1 >&2; exit 1; }
  say "updating the package index"
  $SUDO apt-get update -qq
  local pkgs=() pkg
  while IFS='|' read -r _ _ pkg; do
    [[ "$pkg" == "@grpcurl" ]] && continue
    if [[ "$pkg" == "@jre" ]]; then
      pkg=$(pick_jre) || { say "no OpenJDK 17+ runtime package is offered by apt"; exit 1; }
    fi
    [[ " ${pkgs[*]} " == *" $pkg "* ]] || pkgs+=("$pkg")
  done <<<"$todo"
  if ((${#pkgs[@]})); then
    say "installing ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    hash -r
  fi
  if ! grpcurl_ok && command -v go >/dev/null; then
    say "building grpcurl $GRPCURL_VERSION with go install"
    go install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION"
  fi
}

# Failures here are not fatal: verify() then names what is still missing and how to install it.
install_fuzz_tools() {
  command -v cargo >/dev/null || return 0
  if ! nightly_ok; then
    say "installing the nightly Rust toolchain (for cargo fuzz)"
    rustup toolchain install nightly --profile minimal || say "rustup could not install the nightly toolchain"
  fi
  if ! cargo_fuzz_ok; then
    say "installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION" || say "cargo install cargo-fuzz failed"
  fi
}

verify() {
  local todo; todo=$(missing)
  command -v cargo >/dev/null || todo+=$'\n'"cargo|command -v cargo|Rust from https://rustup.rs"
  nightly_ok || todo+=$'\n'"Rust nightly toolchain (cargo fuzz)|cargo +nightly --version|rustup toolchain install nightly --profile minimal"
  cargo_fuzz_ok || todo+=$'\n'"cargo-fuzz (scripts/fuzz.sh)|cargo fuzz --version|cargo install cargo-fuzz --locked --version $CARGO_FUZZ_VERSION"
  todo=$(sed '/^$/d' <<<"$todo")
  if [[ -n "$todo" ]]; then
    say "MISSING prerequisites:"
    while IFS='|' read -r name check pkg; do
      pkg=${pkg/@jre/an OpenJDK 17+ JRE}
    say "  - $name: check \`$check\` failed (provided by: ${pkg/@grpcurl/go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION})"
    done <<<"$todo"
    exit 1
  fi
  say "ok: libclang at $(libclang_path), java $(java_major), node $(node --version), $(/usr/bin/chromium --version 2>/dev/null), grpcurl at $(grpcurl_path), $(cargo --version), nightly $(cargo +nightly --version | cut -d' ' -f2), $(cargo fuzz --version)"
}

case "$MODE" in
  install | "") install_missing; install_fuzz_tools; verify ;;
  --check) verify ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac
