#!/usr/bin/env bash
# Runs libFuzzer targets for a bounded time each (make fuzz / make fuzz-ci).
#
#   fuzz/run.sh SECONDS BUILD_DIR TARGET...
#
# Each target fuzzes with two corpus directories: BUILD_DIR/corpus/TARGET
# (new inputs land there: build/ is not in git) and fuzz/corpus/TARGET
# (the seeds in the repo, only read).  fuzz/TARGET.dict is used when it
# exists.  A crash, leak, timeout or broken invariant leaves its input in
# BUILD_DIR/artifacts/ and the log in BUILD_DIR/logs/; reproduce it with
#   BUILD_DIR/fuzz_TARGET BUILD_DIR/artifacts/TARGET-crash-...
# Every target runs even after a failure; the exit status is 1 if any
# failed.  FUZZ_ARGS adds libFuzzer options (e.g. FUZZ_ARGS=-jobs=2).
set -u

secs=$1
dir=$2
shift 2

here=$(cd "$(dirname "$0")" && pwd)
rc=0
passed=0
failed=0
summary=""

mkdir -p "$dir/artifacts" "$dir/logs"

for t in "$@"; do
    corpus=$dir/corpus/$t
    log=$dir/logs/$t.log
    mkdir -p "$corpus"

    opts=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048
          -print_final_stats=1 -artifact_prefix="$dir/artifacts/$t-")
    if [ -f "$here/$t.dict" ]; then
        opts+=(-dict="$here/$t.dict")
    fi

    start=$(date +%s)
    # shellcheck disable=SC2086
    "$dir/fuzz_$t" "${opts[@]}" ${FUZZ_ARGS:-} "$corpus" "$here/corpus/$t" \
        > "$log" 2>&1
    r=$?
    took=$(( $(date +%s) - start ))

    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    files=$(find "$corpus" -type f | wc -l)

    if [ $r -eq 0 ]; then
        status=ok
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        status="FAILED (rc $r)"
        rc=1
        echo "== fuzz_$t failed; the end of $log:"
        tail -40 "$log"
    fi

    line=$(printf '%-16s %-14s %4ss %10s execs  cov %5s  corpus %5s' \
           "$t" "$status" "$took" "${execs:-?}" "${cov:-?}" "$files")
    echo "$line"
    summary+="$line"$'\n'
done

echo
echo "fuzz summary (${secs}s each):"
printf '%s' "$summary"
# the plain closing line CI reads: one target is one test
echo "fuzz: $passed passed, $failed failed"

exit $rc
