"""The throughput benchmark runs on CPU (tiny) and prints its JSON contract.

A smoke test only: the numbers it prints are measurements, never asserted as
speed limits here (bench/ is where speed lives).
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ('config', 'batch', 'compile_s', 'step_s', 'tokens_per_s', 'mfu',
        'peak_mem_gb')
TINY = ['--config=configs/pretrain_t5.py:tiny', '--config.model.dtype=float32',
        '--config.model.vocab_size=256', '--config.task.feature_lengths.inputs=32',
        '--config.task.feature_lengths.targets=8', '--steps=3', '--warmup=1']


def _run(*args):
  env = dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, 'bench/train_throughput.py', *TINY, *args], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return [json.loads(l) for l in proc.stdout.splitlines() if l.startswith('{')]


def test_train_throughput_json_line():
  (line,) = _run('--batch=4')
  for key in KEYS:
    assert key in line, (key, line)
  assert line['batch'] == 4
  assert line['step_s'] > 0 and line['tokens_per_s'] > 0
  assert 0 < line['mfu'] < 1
  assert line['compile_s'] > line['step_s']
  # 4 rows x (32 + 8) tokens per step.
  assert abs(line['tokens_per_s'] * line['step_s'] - 160) < 1.0


def test_sweep_one_line_per_point():
  lines = _run('--sweep', '--sweep_batches=2', '--sweep_remat=none,full')
  assert [(l['batch'], l['remat']) for l in lines] == [(2, 'none'),
                                                       (2, 'full')]
  assert all('error' not in l for l in lines), lines


def test_memory_plan_counts_the_state_exactly():
  """--memory_plan compiles for shapes only; the state bytes are exact."""
  (line,) = _run('--batch=4', '--memory_plan', '--config.optimizer.name=adamw')
  assert line['bench'] == 'memory_plan' and line['batch'] == 4
  # fp32 params + AdamW's two fp32 moments + three int32 counters (the
  # train step, Adam's count, the schedule's count).
  assert line['state_bytes'] == 3 * line['params'] * 4 + 3 * 4
  assert line['plan_gb'] >= line['state_gb'] and line['temp_gb'] > 0
