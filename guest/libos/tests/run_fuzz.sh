#!/bin/sh
# run_fuzz.sh FUZZER SEEDS SECONDS WORKDIR
#
# Runs one libFuzzer binary for SECONDS over the seed corpus SEEDS (read only: what the
# run finds goes to WORKDIR/<name>-corpus, which is emptied first) and reports in one
# line. A crash, a leak, a sanitizer report or a hang (a single input over 10 s) fails:
# the input that did it is saved as WORKDIR/<name>-crash-* (or -leak-, -timeout-) and
# named, with the command that replays it; the exit status is then non-zero. It writes
# nothing outside WORKDIR. The last line is "<name>: N runs in S s, no crash" on success.
set -u

if [ $# -ne 4 ]; then
	echo "usage: run_fuzz.sh FUZZER SEEDS SECONDS WORKDIR" >&2
	exit 2
fi
fuzzer=$1
seeds=$2
seconds=$3
work=$4
name=$(basename "$fuzzer")
corpus=$work/$name-corpus
log=$work/$name.log

mkdir -p "$work" || exit 1
rm -rf "$corpus" "$work/$name"-crash-* "$work/$name"-leak-* "$work/$name"-timeout-* \
	"$work/$name"-oom-*
mkdir -p "$corpus" || exit 1

# -timeout: one input that runs this long is a hang; -rss_limit_mb: AddressSanitizer's
# quarantine grows to a few hundred MiB, well below it
"$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	-artifact_prefix="$work/$name-" "$corpus" "$seeds" >"$log" 2>&1
rc=$?
runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
found=$(ls "$work/$name"-crash-* "$work/$name"-leak-* "$work/$name"-timeout-* \
	"$work/$name"-oom-* 2>/dev/null | head -n 1)
if [ "$rc" -ne 0 ] || [ -n "$found" ] || [ -z "$runs" ]; then
	tail -n 40 "$log"
	echo "$name: FAILED (exit $rc) after ${runs:-?} runs; the full log is $log"
	if [ -n "$found" ]; then
		echo "$name: the failing input is $found; replay it with: $fuzzer $found"
	fi
	exit 1
fi
seed=$(sed -n 's/^INFO: Seed: *//p' "$log" | head -n 1)
echo "$name: $runs runs in $seconds s (libFuzzer seed $seed), no crash"
