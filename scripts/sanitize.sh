#!/usr/bin/env bash
# Hardening of the native engines (native/: DHCP responder, route fast path): their unit tests
# under AddressSanitizer and UndefinedBehaviorSanitizer, then a bounded libFuzzer run over the
# DHCP frame parser.
# A fuzzer crash leaves its input in native/fuzz-corpus/ (the regression corpus that
# tests/unit/test_dhcp_engine.py replays) and fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ACA_VENV:-/opt/aca-venv}"
FUZZ_SECONDS="${ACA_FUZZ_SECONDS:-45}"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"

need() {  # a missing tool skips the step on a developer's machine and fails in CI
    if ! command -v "$1" >/dev/null; then
        if [ -n "${CI:-}" ]; then echo "sanitize: $1 is required in CI" >&2; exit 1; fi
        echo "sanitize: $1 not found, skipping $2" >&2
        return 1
    fi
}

work=$(mktemp -d /tmp/aca-sanitize.XXXXXX)
trap 'rm -rf "$work"' EXIT

# 1. The engine built with ASan+UBSan, loaded by the unit tests from a copy of the tree
#    (the copy comes first on sys.path, ahead of the installed build).
cp -a agent tests native pyproject.toml "$work"/
rm -f "$work"/agent/_native*.so
(cd "$work" && ACA_NATIVE_CFLAGS="-Werror $SAN" ACA_NATIVE_LDFLAGS="-fsanitize=address,undefined" \
    "$VENV/bin/python" native/build_ffi.py >"$work/build.log" 2>&1) || { cat "$work/build.log"; exit 1; }
asan=$(gcc -print-file-name=libasan.so)
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
(
    cd "$work"
    loaded=$(LD_PRELOAD="$asan" "$VENV/bin/python" -c "import agent._native as m; print(m.__file__)")
    case "$loaded" in "$work"/*) ;; *) echo "sanitize: loaded $loaded, not the instrumented build" >&2; exit 1;; esac
    LD_PRELOAD="$asan" "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/unit/test_dhcp_engine.py \
        tests/unit/test_route_engine.py
)
echo "sanitize: DHCP and route engine unit tests passed under ASan+UBSan"

# 2. libFuzzer on the frame parser for a bounded time, seeded from the regression corpus.
if need clang "the fuzz run"; then
    clang -O1 $SAN -fsanitize=fuzzer -Inative native/fuzz_dhcp.c native/dhcp.c native/table.c \
        native/pktio.c -pthread -o "$work/fuzz_dhcp"
    mkdir -p "$work/corpus" native/fuzz-corpus
    cp native/fuzz-corpus/* "$work/corpus/" 2>/dev/null || true
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=1" "$work/fuzz_dhcp" -max_total_time="$FUZZ_SECONDS" \
        -max_len=2048 -timeout=5 -artifact_prefix=native/fuzz-corpus/crash- -print_final_stats=1 \
        "$work/corpus" 2>"$work/fuzz.log" || { tail -40 "$work/fuzz.log"; exit 1; }
    grep -E "^stat::number_of_executed_units|^stat::peak_rss_mb" "$work/fuzz.log" || true
    echo "sanitize: fuzzed ${FUZZ_SECONDS}s without a crash"
fi
