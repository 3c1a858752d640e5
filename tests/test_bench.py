"""The throughput benchmark runs on CPU (tiny) and prints its JSON contract.

A smoke test only: the numbers it prints are measurements, never asserted as
speed limits here (bench/ is where speed lives).
"""
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest

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


# ---- bench/gpu_check.sh: the one-command GPU check -------------------------

CHECK = os.path.join(ROOT, 'bench', 'gpu_check.sh')
# The keys of the check's JSON lines (bench/README.md documents them).
POINT_KEYS = ('point', 'role')
JAX_KEYS = ('bench', 'config', 'size', 'batch', 'remat', 'dtype',
            'attention_impl', 'compile_s', 'import_s', 'init_s',
            'first_step_s', 'step_s', 'tokens_per_s',
            'model_tflops_per_step', 'mfu', 'peak_source', 'peak_mem_gb',
            'mem_source', 'loss', 'packed', 'cache_hits', 'cache_misses',
            'trace_s', 'lower_s', 'backend_compile_s', 'compile_saved_s',
            'devices', 'device_kind', 'platform', 'jax', 'wall_s')
PEER_KEYS = ('bench', 'config', 'size', 'batch', 'mode', 'dtype',
             'attention_impl', 'compile_s', 'step_s', 'tokens_per_s',
             'model_tflops_per_step', 'mfu', 'peak_mem_gb', 'loss',
             'device_kind', 'platform', 'torch', 'transformers', 'wall_s')
ATTENTION_KEYS = ('mask', 'impl', 'shape', 'out_err', 'grad_err', 'ok')
SHELLCHECK = (shutil.which('shellcheck') or
              shutil.which('shellcheck', path=os.path.dirname(sys.executable)))


def _check(*args, **env):
  full = dict(os.environ, PYTHON=sys.executable, XLA_FLAGS='',
              JAX_PLATFORMS='cpu', **env)
  return subprocess.run(['bash', CHECK, *args], cwd=ROOT, env=full,
                        capture_output=True, text=True, timeout=1200,
                        check=False)


def test_gpu_check_shellcheck_clean():
  if SHELLCHECK is None:
    pytest.skip('shellcheck is not installed (pip install -e ".[test]")')
  proc = subprocess.run([SHELLCHECK, '--shell=bash', CHECK],
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gpu_check_dry_run_prints_every_command(tmp_path):
  out = tmp_path / 'out'
  proc = _check('--dry-run', str(out))
  assert proc.returncode == 0, proc.stderr
  assert not out.exists()  # nothing ran, nothing written
  cmds = [shlex.split(l) for l in proc.stdout.splitlines()
          if l and not l.startswith('#')]
  assert all(c[0] == sys.executable and os.path.isfile(os.path.join(ROOT, c[1]))
             for c in cmds), cmds
  flags = lambda c: dict(a[2:].split('=', 1) for a in c[2:] if '=' in a)
  jax_points = [(flags(c)['config'].split(':')[1],
                 flags(c)['config.model.attention_impl'], flags(c)['batch'])
                for c in cmds if c[1] == 'bench/train_throughput.py']
  for size in ('small', 'base', 'large'):
    for impl in ('cudnn', 'xla'):
      assert (size, impl, '128') in jax_points, (size, impl)
  assert [p for p in jax_points if p[0] == 'xl'] == [
      ('xl', 'cudnn', b) for b in ('128', '64', '32')]
  peers = [(flags(c)['size'], flags(c)['mode']) for c in cmds
           if c[1] == 'bench/peers/hf_t5.py']
  assert {('base', 'eager'), ('base', 'compile')} <= set(peers)
  for c in cmds:
    if c[1] == 'bench/train_throughput.py':
      f = flags(c)
      assert (f['config.task.feature_lengths.inputs'],
              f['config.task.feature_lengths.targets']) == ('512', '114')
      assert f['config.compile.cache_dir']
  assert cmds[0][1] == 'bench/attention_check.py'
  assert len(cmds) == 20


@pytest.mark.parametrize('args,message', [
    ((), 'error: OUT_DIR missing; usage: bash bench/gpu_check.sh'),
    (('--fast', 'x'), 'error: unknown flag --fast; usage:'),
    (('a', 'b'), "error: one OUT_DIR, got 'a' and 'b'"),
])
def test_gpu_check_usage_errors(args, message):
  proc = _check(*args)
  assert proc.returncode == 2
  assert proc.stderr.strip().startswith(message), proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1


def test_gpu_check_spent_budget_skips_every_point(tmp_path):
  proc = _check(str(tmp_path), GPU_CHECK_BUDGET_S='0')
  assert proc.returncode == 0, proc.stderr
  lines = [json.loads(l) for l in open(tmp_path / 'gpu_check.jsonl')]
  assert len(lines) == 20 and all('skipped' in l for l in lines)
  table = (tmp_path / 'gpu_check.md').read_text()
  assert table.count('skipped: time budget (0 s) spent') == 19  # + attention
  assert 'skipped at the time budget (0 s): points 1, 2, 3' in table


def test_gpu_check_tiny_run_on_cpu(tmp_path):
  """The whole check for real at tiny sizes: every line's keys, the table,
  cudnn's one-line refusal on CPU, and the compilation cache: the first
  headline point fills it, the warm rerun reads it back."""
  cache = tmp_path / 'cache'
  proc = _check(str(tmp_path / 'out'), GPU_CHECK_TINY='1',
                GPU_CHECK_CACHE_DIR=str(cache))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in open(tmp_path / 'out' / 'gpu_check.jsonl')]
  roles = [l['role'] for l in lines]
  assert roles == ['attention', 'headline', 'headline', 'peer', 'sweep',
                   'warm', 'big', 'packed'], roles
  for l in lines:
    assert all(k in l for k in POINT_KEYS), l
  att = lines[0]
  assert len(att['checks']) == 6
  for c in att['checks']:
    assert all(k in c for k in ATTENTION_KEYS) and c['ok'], c
  xla, cudnn = lines[1], lines[2]
  for l in [xla] + lines[4:]:
    missing = [k for k in JAX_KEYS if k not in l]
    assert not missing and 'error' not in l, (missing, l)
  assert cudnn['error'].endswith(
      "needs an NVIDIA GPU but JAX's backend is 'cpu'; use "
      '--config.model.attention_impl=xla.'), cudnn
  assert cudnn['attention_impl'] == 'cudnn' and cudnn['size'] == 'tiny'
  peer = lines[3]
  assert not [k for k in PEER_KEYS if k not in peer], peer
  assert peer['model_tflops_per_step'] == xla['model_tflops_per_step']
  assert xla['top_ops'] and all(
      set(op) == {'name', 'ms_per_step', 'share'} for op in xla['top_ops'])
  assert lines[6]['batch'] == 4  # the first of GPU_CHECK_TINY's big batches
  assert lines[7]['packed'] == 2
  # Cold: every cached compile missed and wrote an entry; warm: read back.
  assert xla['cache_hits'] == 0 and xla['cache_misses'] >= 2
  warm = lines[5]
  assert warm['cache_hits'] >= 2  # the init and the train step
  assert xla['compile_saved_s'] == 0 and warm['compile_saved_s'] > 0
  assert warm['cache_misses'] == xla['cache_misses'] - warm['cache_hits']
  assert len(os.listdir(cache)) >= 2
  table = (tmp_path / 'out' / 'gpu_check.md').read_text()
  assert table.count('\n| ') >= 7 + 1 + 6  # rows + attention header + checks
  assert 'vs the PyTorch peer (HF T5 eager' in table
  assert 'start to first step:' in table and 'cold' in table
