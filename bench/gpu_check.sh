#!/usr/bin/env bash
# The GPU speed check in one command: at most 8 minutes on one H100/H200.
#
#   bash bench/gpu_check.sh OUT_DIR            # OUT_DIR/gpu_check.jsonl + .md
#   bash bench/gpu_check.sh --dry-run OUT_DIR  # print every command, run none
#
# What it runs and the keys of its lines: bench/README.md and
# bench/gpu_check.py. The GPU image has JAX, flax, optax, orbax, torch and
# transformers but not ml_collections: its wheel travels in GPU_CHECK_WHEELS
# (default .whl) and is installed here, into a private folder, when the
# module is missing. PYTHON picks the interpreter (default python3).
set -euo pipefail

usage='usage: bash bench/gpu_check.sh [--dry-run] OUT_DIR'
dry=()
out=''
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry=(--dry-run) ;;
    -h|--help)
      echo "$usage"
      echo "Runs the GPU speed check (bench/README.md); --dry-run prints every"
      echo "command it would run and runs none."
      exit 0 ;;
    -*) echo "error: unknown flag $arg; $usage" >&2; exit 2 ;;
    *)
      if [[ -n "$out" ]]; then
        echo "error: one OUT_DIR, got '$out' and '$arg'; $usage" >&2; exit 2
      fi
      out="$arg" ;;
  esac
done
if [[ -z "$out" ]]; then
  echo "error: OUT_DIR missing; $usage" >&2
  exit 2
fi
out=$(realpath -m -- "$out")

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
wheels=${GPU_CHECK_WHEELS:-.whl}
if ! "$python" -c 'import ml_collections' 2>/dev/null; then
  shopt -s nullglob
  found=("$wheels"/*.whl)
  if (( ${#found[@]} == 0 )); then
    echo "error: ml_collections is not installed and $wheels/ has no wheels;" \
      "carry them as bench/README.md says" >&2
    exit 2
  fi
  site=${TMPDIR:-/tmp}/t5x_lite_gpu_check_site
  install=("$python" -m pip install -q --no-index --no-deps --no-compile
           --no-cache-dir --upgrade --target "$site" "${found[@]}")
  if (( ${#dry[@]} )); then
    echo "# 0. wheels for what the image lacks"
    echo "${install[*]}"
  else
    "${install[@]}"
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$python" bench/gpu_check.py "${dry[@]}" "$out"
