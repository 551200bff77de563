#!/usr/bin/env bash
# Fuzzes every decoder of untrusted input in sluice-wire (the cargo-fuzz project in fuzz/) for a
# bounded time each, starting from the committed seed corpus, then prints how many inputs each
# target ran. Exits non-zero if any target crashed (a panic, a failed property, a sanitizer error,
# a timeout or an out-of-memory); the crashing input is kept in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh          # 30 s per target
#   scripts/fuzz.sh 300      # 5 min per target
#
# The seed corpus in fuzz/corpus/ is copied to a temporary directory first, so the inputs a run
# discovers never land in the work tree. Needs the nightly toolchain and cargo-fuzz, both
# installed by scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "fuzz.sh: $*" >&2; }

SECS="${1:-30}"
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [seconds-per-target]" >&2; exit 2; }

if ! cargo +nightly --version >/dev/null 2>&1; then
  say "the nightly Rust toolchain is missing (cargo +nightly fails); scripts/setup.sh installs it with: rustup toolchain install nightly --profile minimal"
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "cargo-fuzz is missing (cargo fuzz fails); scripts/setup.sh installs it with: cargo install cargo-fuzz --locked --version 0.13.2"
  exit 1
fi

# Same target directory convention as scripts/test.sh, in a subdirectory of its own so that the
# nightly, sanitizer-instrumented artifacts never clobber the stable ones.
BASE_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/sluice/target}"
export CARGO_TARGET_DIR="$BASE_TARGET_DIR/fuzz"
FUZZ_DIR="$PWD/fuzz"
# Release build with debug assertions and overflow checks, so arithmetic overflow is a crash too.
BUILD_FLAGS=(-O -a --fuzz-dir "$FUZZ_DIR")

mapfile -t TARGETS < <(cargo +nightly fuzz list --fuzz-dir "$FUZZ_DIR")
((${#TARGETS[@]})) || { say "no fuzz targets found in $FUZZ_DIR"; exit 1; }

say "building ${#TARGETS[@]} targets (cargo +nightly fuzz build -O -a, target dir $CARGO_TARGET_DIR)"
cargo +nightly fuzz build "${BUILD_FLAGS[@]}"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-fuzz.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

declare -A RUNS TIME STATUS
failed=0
for t in "${TARGETS[@]}"; do
  corpus="$WORK/corpus/$t"
  mkdir -p "$corpus"
  if [[ -d "fuzz/corpus/$t" ]]; then
    cp -R "fuzz/corpus/$t/." "$corpus/"
  else
    say "warning: no seed corpus in fuzz/corpus/$t; starting from nothing"
  fi
  log="$WORK/$t.log"
  say "running $t for ${SECS}s from $(find "$corpus" -type f | wc -l) seed inputs"
  started=$(date +%s)
  touch "$WORK/$t.start"
  rc=0
  # -max_total_time bounds the run and -timeout a single input; `timeout` is the backstop should
  # libFuzzer itself hang (it gets the build check and corpus loading as slack).
  timeout --signal=INT --kill-after=30 $((SECS + 120)) \
    cargo +nightly fuzz run "${BUILD_FLAGS[@]}" "$t" "$corpus" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 >"$log" 2>&1 || rc=$?
  elapsed=$(($(date +%s) - started))
  done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
  if [[ -n "$done_line" ]]; then
    RUNS[$t]=$(awk '{print $2}' <<<"$done_line")
    TIME[$t]=$(awk '{print $5}' <<<"$done_line")
  else
    # No `Done` line after a crash: the last status line (`#N ...`) still tells how far it got.
    RUNS[$t]=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    RUNS[$t]=${RUNS[$t]:-0}
    TIME[$t]=$elapsed
  fi
  if ((rc == 0)) && [[ -n "$done_line" ]]; then
    STATUS[$t]=ok
  else
    failed=1
    STATUS[$t]="FAILED (exit $rc)"
    say "$t FAILED (exit $rc); the end of its log:"
    tail -n 40 "$log" >&2
    find "fuzz/artifacts/$t" -type f -newer "$WORK/$t.start" 2>/dev/null | while read -r a; do
      say "  crashing input kept: $a (replay: cargo +nightly fuzz run -O -a $t $a)"
    done
  fi
done

echo
printf '%-16s %14s %8s  %s\n' target runs seconds status
for t in "${TARGETS[@]}"; do
  printf '%-16s %14s %8s  %s\n' "$t" "${RUNS[$t]}" "${TIME[$t]}" "${STATUS[$t]}"
done
if ((failed)); then
  say "at least one target failed; see above"
  exit 1
fi
say "all ${#TARGETS[@]} targets ran ${SECS}s each without a crash"
