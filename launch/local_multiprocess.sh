#!/usr/bin/env bash
# Runs N jax.distributed CPU processes on this machine, like N hosts of a pod.
#
#   launch/local_multiprocess.sh 2 -- --config=configs/local_tiny.py \
#       --workdir=/tmp/mp --config.train.num_steps=20
#   launch/local_multiprocess.sh 2 --dry-run -- --config=... --workdir=...
#
# Options (before --):
#   --dry-run                 print one command per process and exit 0
#   --devices_per_process=K   fake CPU devices per process (default 1)
#   --port=P                  coordinator port (default: a free one; env T5X_LITE_PORT)
#   --module=M                python module to run (default t5x_lite.train)
# Everything after -- goes to the module; --workdir=DIR is required there
# because each process logs to DIR/logs/process_<i>.log.
#
# Process i gets T5X_LITE_COORDINATOR=127.0.0.1:P, T5X_LITE_NUM_PROCESSES=N,
# T5X_LITE_PROCESS_ID=i (read by t5x_lite/distributed.py), JAX_PLATFORMS=cpu
# and XLA_FLAGS with --xla_force_host_platform_device_count=K. If one process
# fails the others are stopped (they would block in a collective) and the
# script exits with its status. Python: $PYTHON, else the repo's .venv, else
# python3.
set -euo pipefail

usage() {
  # The comment block at the top of this file (without #SBATCH lines).
  awk 'NR == 1 || /^#SBATCH/ {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "$0"
  exit "${1:-2}"
}

die() { echo "local_multiprocess.sh: $*" >&2; exit 2; }

# Prints a command with each word quoted only when the shell needs it
# (readable, and `bash -c` or Python's shlex.split give back the same words).
show() {
  local out="" w
  for w in "$@"; do
    if [[ "$w" =~ ^[A-Za-z0-9_./:=,+@%^-]+$ ]]; then
      out+="$w "
    else
      out+="'${w//\'/\'\\\'\'}' "
    fi
  done
  echo "${out% }"
}

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

[[ $# -ge 1 ]] || usage
case "$1" in -h|--help) usage 0 ;; esac
NUM="$1"; shift
[[ "$NUM" =~ ^[1-9][0-9]*$ ]] || die "the process count must be a positive integer, got '$NUM'"

DRY_RUN=0
DEVICES=1
PORT="${T5X_LITE_PORT:-}"
MODULE=t5x_lite.train
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run|--dry_run) DRY_RUN=1 ;;
    --devices_per_process=*) DEVICES="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --module=*) MODULE="${1#*=}" ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (train flags go after --)" ;;
  esac
  shift
done
TRAIN_FLAGS=("$@")
[[ "$DEVICES" =~ ^[1-9][0-9]*$ ]] || die "--devices_per_process must be a positive integer"

# The workdir, for the per-process logs.
WORKDIR=""
for ((j = 0; j < ${#TRAIN_FLAGS[@]}; j++)); do
  case "${TRAIN_FLAGS[j]}" in
    --workdir=*) WORKDIR="${TRAIN_FLAGS[j]#*=}" ;;
    --workdir) WORKDIR="${TRAIN_FLAGS[j + 1]:-}" ;;
  esac
done
[[ -n "$WORKDIR" ]] || die "pass --workdir=DIR after -- (logs go to DIR/logs/)"

if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then
  PY="$REPO/.venv/bin/python"
else
  PY=python3
fi

if [[ -z "$PORT" ]]; then
  PORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$PORT'"

# Keep the caller's XLA flags but replace any fake-device count.
XLA="$(echo "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[^ ]*//g; s/  +/ /g; s/^ //; s/ $//')"
XLA="${XLA:+$XLA }--xla_force_host_platform_device_count=$DEVICES"

# The command of process $1, into the array CMD.
build_cmd() {
  CMD=(env
    JAX_PLATFORMS=cpu
    "XLA_FLAGS=$XLA"
    "PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}"
    "T5X_LITE_COORDINATOR=127.0.0.1:$PORT"
    "T5X_LITE_NUM_PROCESSES=$NUM"
    "T5X_LITE_PROCESS_ID=$1"
    "$PY" -m "$MODULE" "${TRAIN_FLAGS[@]}")
}

if [[ "$DRY_RUN" == 1 ]]; then
  for ((i = 0; i < NUM; i++)); do
    build_cmd "$i"
    show "${CMD[@]}"
  done
  exit 0
fi

LOGDIR="$WORKDIR/logs"
mkdir -p "$LOGDIR"
PIDS=()
# SIGTERM first; JAX's distributed client treats SIGTERM as a preemption
# notice and may keep running, so SIGKILL whatever is left after 5 s.
stop_all() {
  local pid alive t
  for pid in "${PIDS[@]}"; do
    if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; fi
  done
  for ((t = 0; t < 25; t++)); do
    alive=0
    for pid in "${PIDS[@]}"; do
      if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    [[ $alive == 1 ]] || break
    sleep 0.2
  done
  for pid in "${PIDS[@]}"; do
    if [[ -n "$pid" ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  for pid in "${PIDS[@]}"; do
    if [[ -n "$pid" ]]; then wait "$pid" 2>/dev/null || true; fi
  done
}
trap 'echo "local_multiprocess.sh: interrupted, stopping processes" >&2; stop_all; exit 130' INT TERM

for ((i = 0; i < NUM; i++)); do
  build_cmd "$i"
  "${CMD[@]}" >"$LOGDIR/process_$i.log" 2>&1 &
  PIDS+=("$!")
done
echo "local_multiprocess.sh: $NUM processes (coordinator 127.0.0.1:$PORT), logs in $LOGDIR/process_<i>.log"

# Poll rather than `wait -n`: we must know which process ended, and bash
# before 5.1 cannot say.
remaining=$NUM
while [[ $remaining -gt 0 ]]; do
  for ((i = 0; i < NUM; i++)); do
    pid="${PIDS[i]}"
    [[ -n "$pid" ]] || continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    PIDS[i]=""
    remaining=$((remaining - 1))
    if [[ $rc -ne 0 ]]; then
      echo "local_multiprocess.sh: process $i exited with status $rc; stopping the others. Its log ends:" >&2
      tail -n 30 "$LOGDIR/process_$i.log" >&2 || true
      stop_all
      exit "$rc"
    fi
  done
  if [[ $remaining -gt 0 ]]; then sleep 0.2; fi
done
echo "local_multiprocess.sh: all $NUM processes finished"
