#!/usr/bin/env bash
# Fuzzes everything tether parses from outside, each target for a bounded time.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET]     (default 60)
#
# With a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`): libFuzzer, with
# the corpus in fuzz/corpus/<target> (seeds committed; new finds are kept there: minimise
# with `cargo +nightly fuzz cmin <target>` before committing). Without: the same targets
# as property tests (tests/parsers.rs) with as many cases as fit the time. Prints, per
# target, runs and time; exits non-zero on the first crash (its input is in
# fuzz/artifacts/<target>).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs="${1:-60}"
targets=(engineio_query open_packet cookie proxy_header path request_target config import)

if cargo +nightly fuzz --version >/dev/null 2>&1; then
  for t in "${targets[@]}"; do
    log=$(mktemp)
    if ! cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
      tail -40 "$log"
      echo "fuzz: $t crashed (input in fuzz/artifacts/$t)" >&2
      exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "$t: $runs runs in ${secs}s, 0 crashes ($cov)"
    rm -f "$log"
  done
else
  echo "no nightly cargo-fuzz: running tests/parsers.rs as property tests instead" >&2
  cd ..
  cases=$((secs * 20000))
  start=$(date +%s)
  PROPTEST_CASES=$cases timeout $((secs * ${#targets[@]} + 300)) cargo test --release --quiet --test parsers
  echo "parsers: $cases cases per target in $(( $(date +%s) - start ))s, 0 failures"
fi
