#!/usr/bin/env bash
# Trains on a Cloud TPU VM slice: every host runs the same command.
#
#   launch/tpu_pod.sh v5p-128 configs/pretrain_t5.py:xl \
#       --workdir=gs://my-bucket/t5x_lite/xl -- --config.train.batch_size=1024
#   launch/tpu_pod.sh v4-32 configs/pretrain_t5.py:base --workdir=gs://b/r --dry-run
#
# Steps: find the slice (`gcloud compute tpus tpu-vm describe`) or create it;
# copy this checkout to every worker and pip-install it with jax[tpu] (skip with
# --no-setup); then `gcloud compute tpus tpu-vm ssh --worker=all` runs
# `python -m t5x_lite.train --config=CONFIG --workdir=WORKDIR <extra flags>` on
# every host at once. JAX finds the other hosts by itself on a TPU VM
# (t5x_lite/distributed.py calls jax.distributed.initialize()).
#
# Options (flag or environment variable):
#   --name=NAME        TPU_NAME     slice name (default t5x-lite-<accelerator>)
#   --zone=ZONE        ZONE         default: gcloud's compute/zone
#   --project=PROJECT  PROJECT      default: gcloud's core/project
#   --version=VERSION  TPU_VERSION  TPU VM runtime (default by generation)
#   --workdir=DIR      WORKDIR      required; a gs:// path every host can reach
#   --spot                          create the slice as Spot VMs
#   --no-setup                      reuse the copy already installed on the VMs
#   --detach                        run under nohup (log: ~/t5x_lite/train.log
#                                   on every worker) and return at once
#   --dry-run                       print the gcloud commands and the per-host
#                                   train command, run nothing
set -euo pipefail

usage() {
  # The comment block at the top of this file (without #SBATCH lines).
  awk 'NR == 1 || /^#SBATCH/ {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "$0"
  exit "${1:-2}"
}

die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

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

[[ "${1:-}" == -h || "${1:-}" == --help ]] && usage 0
[[ $# -ge 2 ]] || usage
ACCELERATOR="$1"
CONFIG="$2"
shift 2

NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
VERSION="${TPU_VERSION:-}"
WORKDIR="${WORKDIR:-}"
SPOT=0
SETUP=1
DETACH=0
DRY_RUN=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --no-setup|--no_setup) SETUP=0 ;;
    --detach) DETACH=1 ;;
    --dry-run|--dry_run) DRY_RUN=1 ;;
    -h|--help) usage 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1' (train flags go after --)" ;;
  esac
  shift
done
EXTRA_FLAGS=("$@")

[[ "$ACCELERATOR" =~ ^v[0-9][a-z]*(litepod)?-[0-9]+$ ]] ||
  die "accelerator type '$ACCELERATOR' does not look like v4-32, v5p-128, v5litepod-16 or v6e-64"
[[ -n "$WORKDIR" ]] ||
  die "set --workdir=gs://BUCKET/PATH (or WORKDIR): every host must see the same checkpoint directory"
NAME="${NAME:-t5x-lite-$ACCELERATOR}"

# TPU VM runtime per generation (cloud.google.com/tpu/docs/runtimes).
if [[ -z "$VERSION" ]]; then
  case "$ACCELERATOR" in
    v2-*|v3-*|v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*|v5e-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) die "no default runtime for '$ACCELERATOR'; pass --version=RUNTIME" ;;
  esac
fi

# The jax pin of setup.py, so every host runs the version the tests ran.
JAX_VERSION="$(sed -n 's/.*"jax==\([0-9.]*\)".*/\1/p' "$REPO/setup.py" | head -n1)"
[[ -n "$JAX_VERSION" ]] || die "could not read the jax==X pin from $REPO/setup.py"

LOC=()
[[ -n "$ZONE" ]] && LOC+=("--zone=$ZONE")
[[ -n "$PROJECT" ]] && LOC+=("--project=$PROJECT")
TPU=(gcloud compute tpus tpu-vm)
TARBALL="${TMPDIR:-/tmp}/t5x_lite_${NAME}.tgz"
# shellcheck disable=SC2088  # the remote shell expands the tilde
REMOTE_DIR='~/t5x_lite'

DESCRIBE=("${TPU[@]}" describe "$NAME" "${LOC[@]}" '--format=value(state)')
CREATE=("${TPU[@]}" create "$NAME" "${LOC[@]}" "--accelerator-type=$ACCELERATOR" "--version=$VERSION")
[[ $SPOT == 1 ]] && CREATE+=(--spot)

# A source tarball without the venv, git metadata or local runs; data/cache
# (the SentencePiece vocabulary) ships with it so every host tokenizes alike.
PACK=(tar -czf "$TARBALL" -C "$REPO" --exclude=./.venv --exclude=./.git
  --exclude=./runs --exclude=./workdirs --exclude=__pycache__ .)
SCP=("${TPU[@]}" scp "$TARBALL" "$NAME:~/t5x_lite.tgz" --worker=all "${LOC[@]}")
SETUP_CMD="set -e; rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf ~/t5x_lite.tgz -C $REMOTE_DIR && cd $REMOTE_DIR && python3 -m pip install -q -e . 'jax[tpu]==$JAX_VERSION' && { test -d data/cache || python3 -m data.build; }"
SETUP_SSH=("${TPU[@]}" ssh "$NAME" --worker=all "${LOC[@]}" "--command=$SETUP_CMD")

# The command every host runs; the extra flags are quoted for the remote shell.
TRAIN=(python3 -m t5x_lite.train "--config=$CONFIG" "--workdir=$WORKDIR" "${EXTRA_FLAGS[@]}")
HOST_CMD="cd $REMOTE_DIR && $(show "${TRAIN[@]}")"
if [[ $DETACH == 1 ]]; then
  HOST_CMD="cd $REMOTE_DIR && nohup $(show "${TRAIN[@]}") > train.log 2>&1 < /dev/null &"
fi
RUN_SSH=("${TPU[@]}" ssh "$NAME" --worker=all "${LOC[@]}" "--command=$HOST_CMD")


if [[ $DRY_RUN == 1 ]]; then
  echo "# 1. find the slice; create it only if describe finds none"
  show "${DESCRIBE[@]}"
  show "${CREATE[@]}"
  if [[ $SETUP == 1 ]]; then
    echo "# 2. copy this checkout to every worker and install it"
    show "${PACK[@]}"
    show "${SCP[@]}"
    show "${SETUP_SSH[@]}"
  fi
  echo "# 3. train: every worker runs the per-host command"
  show "${RUN_SSH[@]}"
  echo "# per-host command: $HOST_CMD"
  exit 0
fi

STATE="$("${DESCRIBE[@]}" 2>/dev/null || true)"
if [[ -z "$STATE" ]]; then
  echo "tpu_pod.sh: creating $ACCELERATOR slice '$NAME' ($VERSION)" >&2
  "${CREATE[@]}"
elif [[ "$STATE" != READY ]]; then
  die "slice '$NAME' exists but is $STATE; wait for READY or delete it: ${TPU[*]} delete $NAME ${LOC[*]}"
else
  echo "tpu_pod.sh: reusing READY slice '$NAME'" >&2
fi
if [[ $SETUP == 1 ]]; then
  "${PACK[@]}"
  "${SCP[@]}"
  "${SETUP_SSH[@]}"
fi
exec "${RUN_SSH[@]}"
