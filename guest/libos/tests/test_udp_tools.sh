#!/bin/sh
# test_udp_tools.sh UDP_LOADGEN UDP_ECHO_KERNEL
#
# End-to-end check of the two kernel-socket UDP tools against each other on loopback.
# It owns one udp_echo_kernel process, which it starts on 127.0.0.1 with a port the
# kernel picks, and a temporary directory; it kills the one and removes the other on
# every way out. It builds nothing, sends only to 127.0.0.1 and touches no other file.
# The last line of output is "N passed, M failed"; the exit status is non-zero on any
# failure.
set -u

if [ $# -ne 2 ]; then
	echo "usage: test_udp_tools.sh UDP_LOADGEN UDP_ECHO_KERNEL" >&2
	exit 2
fi
LOADGEN=$1
ECHO=$2

pass=0
fail=0
server_pid=
tmp=$(mktemp -d) || exit 1

cleanup() {
	if [ -n "$server_pid" ]; then
		kill "$server_pid" 2>/dev/null
		wait "$server_pid" 2>/dev/null
		server_pid=
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() {
	pass=$((pass + 1))
	echo "ok   - $1"
}

not_ok() {
	fail=$((fail + 1))
	echo "FAIL - $1"
}

# field JSON NAME: the value of a top-level scalar field of a one-line JSON object.
field() {
	printf '%s\n' "$1" | tr '{},' '\n\n\n' |
		awk -F: -v key="\"$2\"" '{ gsub(/[ \t]/, "") } $1 == key { print $2; exit }'
}

# expect DESCRIPTION VALUE CONDITION: CONDITION is an awk expression on v.
# A missing or non-numeric value always fails, so a broken tool cannot pass by silence.
expect() {
	if printf '%s\n' "$2" | grep -Eq '^-?[0-9]+(\.[0-9]+)?$' &&
		awk -v v="$2" "BEGIN { v += 0; exit !($3) }"; then
		ok "$1 ($2)"
	else
		not_ok "$1 (got '${2:-missing}', wanted $3)"
	fi
}

# check_healthy NAME JSON: the checks every run against a working server must pass.
check_healthy() {
	name=$1
	json=$2
	expect "$name: received > 0" "$(field "$json" received)" 'v > 0'
	expect "$name: lost == 0" "$(field "$json" lost)" 'v == 0'
	expect "$name: bad == 0" "$(field "$json" bad)" 'v == 0'
}

# run_loadgen NAME ARGS...: run it with --json into $tmp/NAME.json, show the line, check exit 0.
run_loadgen() {
	name=$1
	shift
	"$LOADGEN" "$@" --json >"$tmp/$name.json" 2>"$tmp/$name.err"
	rc=$?
	expect "$name: exit status 0" "$rc" 'v == 0'
	echo "     $(cat "$tmp/$name.json")"
}

start_server() {
	# Created here, not by the background redirection, so the first read cannot race it.
	: >"$tmp/server.err"
	"$ECHO" --bind 127.0.0.1 --port 0 --threads 2 >"$tmp/server.out" 2>"$tmp/server.err" &
	server_pid=$!
	# The server names its address on stderr once every socket is bound.
	i=0
	while [ $i -lt 50 ]; do
		port=$(sed -n 's/^udp_echo_kernel: listening on 127\.0\.0\.1:\([0-9][0-9]*\) .*/\1/p' \
			"$tmp/server.err")
		[ -n "$port" ] && return 0
		kill -0 "$server_pid" 2>/dev/null || break
		sleep 0.1
		i=$((i + 1))
	done
	return 1
}

stop_server() {
	kill -TERM "$server_pid" 2>/dev/null
	wait "$server_pid"
	server_rc=$?
	server_pid=
}

port=
if start_server; then
	ok "server listening on 127.0.0.1:$port"
else
	not_ok "server did not start: $(cat "$tmp/server.err" 2>/dev/null)"
fi

# Loopback loses nothing at these loads, but a busy host can deschedule the server for
# longer than the default 200 ms timeout; 1 s keeps such stalls from reading as loss.
if [ -n "$port" ]; then
	run_loadgen closed --dst 127.0.0.1 --port "$port" --window 4 --duration 2 --timeout-ms 1000
	closed=$(cat "$tmp/closed.json")
	check_healthy "closed loop" "$closed"

	run_loadgen open --dst 127.0.0.1 --port "$port" --rate 2000 --duration 2 --timeout-ms 1000
	open=$(cat "$tmp/open.json")
	check_healthy "open loop" "$open"
	expect "open loop: offered_pps within 5% of 2000" "$(field "$open" offered_pps)" \
		'v >= 1900 && v <= 2100'

	# bursts of 50 back to back keep the average rate
	run_loadgen burst --dst 127.0.0.1 --port "$port" --rate 2000 --burst 50 --duration 2 \
		--timeout-ms 1000
	burst=$(cat "$tmp/burst.json")
	check_healthy "bursts" "$burst"
	expect "bursts: burst reported as 50" "$(field "$burst" burst)" 'v == 50'
	expect "bursts: offered_pps within 5% of 2000" "$(field "$burst" offered_pps)" \
		'v >= 1900 && v <= 2100'

	stop_server
	expect "server: exit status 0 on SIGTERM" "$server_rc" 'v == 0'
	srv=$(cat "$tmp/server.out")
	echo "     $srv"
	srv_rx=$(field "$srv" received)
	expect "server: received > 0" "$srv_rx" 'v > 0'
	expect "server: sent == received" "$(field "$srv" sent)" "v == ${srv_rx:-0} && v > 0"

	# Nothing listens on the port now: every request must be counted lost.
	run_loadgen dead --dst 127.0.0.1 --port "$port" --window 4 --duration 0.5 --warmup 0 \
		--timeout-ms 100
	dead=$(cat "$tmp/dead.json")
	dead_sent=$(field "$dead" sent)
	expect "no server: sent > 0" "$dead_sent" 'v > 0'
	expect "no server: received == 0" "$(field "$dead" received)" 'v == 0'
	expect "no server: lost == sent" "$(field "$dead" lost)" "v == ${dead_sent:-0} && v > 0"
fi

# A bad argument: exit status 2 and exactly one line naming the option.
"$LOADGEN" --dst 127.0.0.1 --size 8 >"$tmp/args.out" 2>"$tmp/args.err"
expect "bad --size: exit status 2" "$?" 'v == 2'
expect "bad --size: one line on stderr" "$(wc -l <"$tmp/args.err" | tr -d ' ')" 'v == 1'
if grep -q '^udp_loadgen: --size: ' "$tmp/args.err"; then
	ok "bad --size: message names the option"
else
	not_ok "bad --size: message was '$(cat "$tmp/args.err")'"
fi

"$LOADGEN" --dst 127.0.0.1 --burst 8 >"$tmp/args.out" 2>"$tmp/args.err"
expect "--burst without --rate: exit status 2" "$?" 'v == 2'
if grep -q '^udp_loadgen: --burst: only for open loop' "$tmp/args.err"; then
	ok "--burst without --rate: message names the option"
else
	not_ok "--burst without --rate: message was '$(cat "$tmp/args.err")'"
fi

echo "$pass passed, $fail failed"
if [ "$fail" -eq 0 ]; then
	exit 0
fi
exit 1
