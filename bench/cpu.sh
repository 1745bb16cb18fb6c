#!/usr/bin/env bash
# ./run.sh bench cpu [--quick] [--requests N] [--grant-copy] [--baseline JSON]
#
# The deterministic cost benchmark: instructions per request in Ferrite's
# own data path, split by stage. The real blkback and NVMe driver run on the
# host (bench/cpu: blkback's simulated blkfront, the fake NVMe controller
# completing every command at its doorbell) under callgrind, which counts
# only inside the backend's poll; bench/cpu.py attributes every instruction
# to a stage or to the fakes (excluded). Workloads: 4 KiB read and write,
# 128 KiB read, at queue depth 1 and 32, persistent grants (as Linux guests
# negotiate; --grant-copy: a frontend without them).
#
# Output: the table, with the stored figures of the nearest earlier commit
# beside it (or those of --baseline JSON, e.g. bench/cpu/before-issue14.json);
# results/bench-cpu/<commit>[-dirty][-copy][-quick].json.
# --quick: 100 requests per workload (a smoke test; ./run.sh test).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
REQUESTS=2000
EXTRA=()
SUFFIX=""
QUICK=""
BASE=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) REQUESTS=100; QUICK=-quick ;;
        --requests) REQUESTS=$2; shift ;;
        --grant-copy) EXTRA+=(--grant-copy); SUFFIX=-copy ;;
        --no-zerocopy) EXTRA+=(--copy); SUFFIX=-nozc ;;
        --baseline) BASE=(--baseline "$2"); shift ;;
        *) echo "usage: ./run.sh bench cpu [--quick] [--requests N] [--grant-copy] [--no-zerocopy] [--baseline JSON]" >&2; exit 2 ;;
    esac
    shift
done

if ! command -v valgrind >/dev/null; then
    echo "[bench cpu] installing valgrind (callgrind)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends valgrind >/dev/null \
        || { echo "[bench cpu] cannot install valgrind" >&2; exit 1; }
fi

LOGS=$ROOT/results/logs
mkdir -p "$LOGS" "$ROOT/results/bench-cpu"
echo "[bench cpu] building bench/cpu (profile cpubench: release + line tables); log: $LOGS/build-cpubench.log"
if ! cargo build -p cpubench --profile cpubench >"$LOGS/build-cpubench.log" 2>&1; then
    tail -n 30 "$LOGS/build-cpubench.log"; exit 1
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/cpubench/cpubench

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "[bench cpu] $REQUESTS requests per workload under callgrind; log: $LOGS/bench-cpu.log"
if ! (cd "$WORK" && valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" \
    --collect-atstart=no --toggle-collect='cpubench::backend_poll' \
    --zero-before='cpubench::measure_begin' --dump-before='cpubench::measure_end' \
    --separate-callers=60 --compress-strings=no --compress-pos=no \
    "$BIN" --requests "$REQUESTS" "${EXTRA[@]}" >"$WORK/workloads.txt" 2>"$LOGS/bench-cpu.log"); then
    echo "[bench cpu] the workload failed:" >&2; tail -n 20 "$LOGS/bench-cpu.log" >&2; exit 1
fi
# Quick runs are stored (and compared) apart from full ones.
SUFFIX=$SUFFIX$QUICK
DUMPS=$(ls "$WORK"/cg.out.* 2>/dev/null | sort -t. -k3 -n)

# Stored figures are keyed by commit; a tree with changes gets "-dirty".
COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && COMMIT=$COMMIT-dirty
# The nearest stored result of this commit (if the tree changed) or an earlier one.
[ ${#BASE[@]} -eq 0 ] && for c in $( (git rev-parse --short=12 HEAD; git rev-list --abbrev-commit --abbrev=12 -n 200 HEAD~1) 2>/dev/null); do
    f=$ROOT/results/bench-cpu/$c$SUFFIX.json
    if [ "$c$SUFFIX" != "$COMMIT$SUFFIX" ] && [ -f "$f" ]; then BASE=(--baseline "$f"); break; fi
done
# shellcheck disable=SC2086
python3 "$ROOT/bench/cpu.py" "$ROOT/results/bench-cpu/$COMMIT$SUFFIX.json" "$COMMIT" "$WORK/workloads.txt" $DUMPS "${BASE[@]}"
