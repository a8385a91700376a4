#!/usr/bin/env bash
# make demo: the gateway and the simulators on the demo line, `gateway status --watch`
# until Ctrl-C or DEMO_SECONDS, then everything stopped cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
CONFIG=${CONFIG:-config/demo-line.yaml}
STATE=$(mktemp -d /tmp/railgate-demo.XXXXXX)
PIDFILE=$STATE/gateway.pid

cleanup() {
  trap - EXIT INT TERM
  [ -n "${SIM_PID:-}" ] && kill -INT "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null || true
  if [ -n "${TAIL_PID:-}" ]; then
    echo; echo "== the alarm table the gateway holds (gateway alarms list) =="
    $BIN/gateway alarms list -c "$CONFIG" || true
    echo; echo "== alarms as an HMI saw them on Kafka (gateway alarms tail, last 15 lines) =="
    kill "$TAIL_PID" 2>/dev/null; wait "$TAIL_PID" 2>/dev/null || true
    tail -n 15 "$STATE/alarms-tail.log" || true
  fi
  [ -f "$PIDFILE" ] && $BIN/gateway stop --pidfile "$PIDFILE" || true
  echo
  echo "demo stopped; gateway log: $STATE/gateway.log; simulator summary: $STATE/sim-summary.json;"
  echo "alarms seen on Kafka: $STATE/alarms-tail.log"
}
trap cleanup EXIT INT TERM

$BIN/gateway run -c "$CONFIG" --daemon --pidfile "$PIDFILE" --log "$STATE/gateway.log"
for _ in $(seq 50); do $BIN/gateway status -c "$CONFIG" --json >/dev/null 2>&1 && break; sleep 0.1; done

# an HMI's view: rebuild the alarm table from the day's Kafka topic and follow it
$BIN/gateway alarms tail -c "$CONFIG" >"$STATE/alarms-tail.log" 2>&1 &
TAIL_PID=$!

# a few scheduled faults so the counters and conditions have something to show
$BIN/gateway simulate -c "$CONFIG" --seed 7 --fault drop=0.01 --fault duplicate=0.01 --fault corrupt=0.005 \
  --fault garbage=0.002 --scenario 11:double_master --summary "$STATE/sim-summary.json" \
  ${DEMO_SECONDS:+--duration "$DEMO_SECONDS"} >"$STATE/sim.log" 2>&1 &
SIM_PID=$!

WATCH_SECONDS=${DEMO_SECONDS:-} $BIN/gateway status -c "$CONFIG" --watch || true
