"""The GPU speed check's plan, runner and report (bench/gpu_check.sh calls it).

    bash bench/gpu_check.sh OUT_DIR            # OUT_DIR/gpu_check.{jsonl,md}
    bash bench/gpu_check.sh --dry-run OUT_DIR  # every command, none run

In order, each point a fresh subprocess (its own compile time and memory
peak), until the time budget (GPU_CHECK_BUDGET_S, default 450 s: the whole
check stays under 8 minutes) runs out; what is left is a 'skipped' line:
  1. bench/attention_check.py: the fused branch on cuDNN against the einsum
     (values, gradients, no cross-segment leak, what reaches the kernel);
  2. the headline size (base) at inputs 512 / targets 114, bf16, batch 128,
     each attention_impl (cudnn first), the config's remat; cudnn's line
     carries the step's top ops (--profile_top);
  3. the Hugging Face peer (bench/peers/hf_t5.py), eager and torch.compile;
  4. a remat sweep of the headline with cudnn (none, save_dots, besides the
     config's save_dots_no_batch); the best tokens/s wins;
  5. the other sizes (small, large), each impl, with the best remat (a point
     that fails with it is retried once with 'full');
  6. the first headline point again, on the now warm compilation cache
     (compile_s warm);
  7. XL's memory: the largest batch of 128, 64, 32 that runs (remat full);
  8. the headline on packed rows (4 segments per row);
  9. the peer at the other sizes.
Every line is train_throughput.py's (or the peer's, or attention_check's)
plus point, role and wall_s; a failed point has 'error', a skipped one
'skipped'. GPU_CHECK_TINY=1 swaps in tiny sizes, batch 2 and short lengths
for a CPU run (tests/test_bench.py); GPU_CHECK_SIZES, GPU_CHECK_BATCH,
GPU_CHECK_IMPLS and GPU_CHECK_PEER_MODES override single settings.
"""
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

import gpu_report

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
CONFIG = 'configs/pretrain_t5.py'
MIN_START_S = 20  # a point is not started with less budget than this left


@dataclasses.dataclass
class Settings:
  sizes: List[str]
  headline: str
  big: str
  batch: int
  inputs: int
  targets: int
  impls: List[str]
  peer_modes: List[str]
  sweep_remat: List[str]
  big_batches: List[int]
  steps: int = 10
  warmup: int = 2
  packed: int = 4
  profile_top: int = 10
  vocab: int = 0  # 0: the config's (32128)
  budget_s: float = 450.0
  cache_dir: str = ''

  @classmethod
  def from_env(cls, env=None) -> 'Settings':
    env = os.environ if env is None else env
    if env.get('GPU_CHECK_TINY', '') not in ('', '0'):
      s = cls(sizes=['tiny'], headline='tiny', big='tiny', batch=2, inputs=32,
              targets=8, impls=['xla', 'cudnn'], peer_modes=['eager'],
              sweep_remat=['full'], big_batches=[4, 2], steps=2, warmup=1,
              packed=2, profile_top=5, vocab=256)
    else:
      s = cls(sizes=['small', 'base', 'large'], headline='base', big='xl',
              batch=128, inputs=512, targets=114, impls=['cudnn', 'xla'],
              peer_modes=['eager', 'compile'],
              sweep_remat=['none', 'save_dots'], big_batches=[128, 64, 32])
    words = lambda k, d: env[k].replace(',', ' ').split() if env.get(k) else d
    s.sizes = words('GPU_CHECK_SIZES', s.sizes)
    if s.headline not in s.sizes:
      s.headline = s.sizes[0]
    s.impls = words('GPU_CHECK_IMPLS', s.impls)
    s.peer_modes = words('GPU_CHECK_PEER_MODES', s.peer_modes)
    s.batch = int(env.get('GPU_CHECK_BATCH', s.batch))
    s.budget_s = float(env.get('GPU_CHECK_BUDGET_S', s.budget_s))
    s.cache_dir = env.get('GPU_CHECK_CACHE_DIR') or os.path.join(
        tempfile.gettempdir(), 't5x_lite_gpu_check_cache')
    return s


def jax_point(s: Settings, size, impl, remat, batch=None, steps=None,
              warmup=None, extra=()) -> List[str]:
  """A bench/train_throughput.py command line (remat None: the config's)."""
  cmd = [sys.executable, os.path.join('bench', 'train_throughput.py'),
         f'--config={CONFIG}:{size}', f'--batch={batch or s.batch}',
         f'--steps={steps or s.steps}',
         f'--warmup={s.warmup if warmup is None else warmup}',
         f'--config.model.attention_impl={impl}',
         f'--config.task.feature_lengths.inputs={s.inputs}',
         f'--config.task.feature_lengths.targets={s.targets}',
         f'--config.compile.cache_dir={s.cache_dir}']
  if remat:
    cmd.append(f'--config.model.remat_policy={remat}')
  if s.vocab:
    cmd.append(f'--config.model.vocab_size={s.vocab}')
  return cmd + list(extra)


def peer_point(s: Settings, size, mode) -> List[str]:
  cmd = [sys.executable, os.path.join('bench', 'peers', 'hf_t5.py'),
         f'--size={size}', f'--batch={s.batch}', f'--inputs={s.inputs}',
         f'--targets={s.targets}', f'--mode={mode}', f'--steps={s.steps}',
         f'--warmup={s.warmup}']
  return cmd + ([f'--vocab={s.vocab}'] if s.vocab else [])


class Runner:
  """Runs (or, dry, prints) points within the budget; keeps their lines."""

  def __init__(self, s: Settings, out_jsonl: Optional[str], dry: bool):
    self.s, self.out, self.dry = s, out_jsonl, dry
    self.start = time.monotonic()
    self.lines: List[Dict] = []

  def left(self) -> float:
    return self.s.budget_s - (time.monotonic() - self.start)

  def run(self, role: str, cmd: List[str], note: str = '', **meta) -> Dict:
    """meta: what the point is (size, attention_impl, remat, batch, mode),
    kept on lines that failed or were skipped; a measured line has its own."""
    point = len(self.lines) + 1
    head = dict(meta, point=point, role=role)
    if self.dry:
      print(f'# {point}. {role}' + (f': {note}' if note else ''))
      print(shlex.join(cmd), flush=True)
      line = dict(head, dry_run=True)
    elif self.left() < MIN_START_S:
      line = dict(head, skipped=f'time budget ({self.s.budget_s:.0f} s) '
                  'spent', command=shlex.join(cmd[1:]))
    else:
      line = dict(head, **self._execute(cmd))
    self.lines.append(line)
    if self.out and not self.dry:
      with open(self.out, 'a') as f:
        f.write(json.dumps(line) + '\n')
    return line

  def _execute(self, cmd) -> Dict:
    cap = self.left()
    t = time.monotonic()
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    try:
      proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=cap, check=False)
    except subprocess.TimeoutExpired:
      return {'error': f'stopped at the time budget after {cap:.0f} s',
              'wall_s': round(time.monotonic() - t, 1)}
    wall = round(time.monotonic() - t, 1)
    found = [json.loads(l) for l in proc.stdout.splitlines()
             if l.startswith('{')]
    if proc.returncode == 0 and found:
      # attention_check prints one line per mask kind: keep them together.
      return dict(found[-1], checks=found, wall_s=wall) if len(
          found) > 1 else dict(found[0], wall_s=wall)
    tail = (proc.stderr or '').strip().splitlines()[-1:] or [
        f'exit status {proc.returncode}']
    out = {'error': tail[0][:300], 'wall_s': wall}
    if found:
      out['checks'] = found
    return out


def _ok(line):
  return 'tokens_per_s' in line and 'error' not in line


def best_remat(lines, size, impl, default='none'):
  rows = [l for l in lines if _ok(l) and l.get('size') == size and
          l.get('attention_impl') == impl and l.get('role') in
          ('headline', 'sweep')]
  return max(rows, key=lambda l: l['tokens_per_s'])['remat'] if rows else (
      default)


def plan(r: Runner):
  """Every point of the check, in order (see the module docstring)."""
  s = r.s
  fast, impls = s.impls[0], s.impls
  attn = [sys.executable, os.path.join('bench', 'attention_check.py')]
  r.run('attention', attn + (['--tiny'] if s.vocab else []),
        'the fused branch against the einsum')

  def jax_run(role, note, size, impl, remat, batch=None, **kw):
    return r.run(role, jax_point(s, size, impl, remat, batch=batch, **kw),
                 note, size=size, attention_impl=impl, remat=remat or
                 'config', batch=batch or s.batch)

  for i, impl in enumerate(impls):
    extra = [f'--profile_top={s.profile_top}'] if i == 0 else []
    jax_run('headline', f'{s.headline} {impl}, the config\'s remat',
            s.headline, impl, None, extra=extra)
  for mode in s.peer_modes:
    r.run('peer', peer_point(s, s.headline, mode), f'HF T5 {mode}',
          bench='hf_t5_peer', size=s.headline, mode=mode, batch=s.batch)
  for remat in s.sweep_remat:
    jax_run('sweep', f'remat {remat}', s.headline, fast, remat,
            steps=max(s.steps // 2, 2))
  best = 'BEST_REMAT' if r.dry else best_remat(r.lines, s.headline, fast)
  for size in [z for z in s.sizes if z != s.headline]:
    for impl in impls:
      line = jax_run('size', f'{size} {impl}, best remat of the sweep', size,
                     impl, best)
      if 'error' in line and best != 'full' and not r.dry:
        jax_run('size', 'retry, remat full', size, impl, 'full')
  jax_run('warm', 'the first headline point again: warm compilation cache',
          s.headline, fast, None)
  for batch in s.big_batches:
    line = jax_run('big', f'{s.big} memory at batch {batch} (stops at the '
                   'first fit)', s.big, fast, 'full', batch=batch, steps=2,
                   warmup=0)
    if _ok(line):
      break
  jax_run('packed', f'{s.packed} segments per row', s.headline, fast, best,
          extra=[f'--packed={s.packed}'])
  for size in [z for z in s.sizes if z != s.headline]:
    for mode in s.peer_modes:
      r.run('peer', peer_point(s, size, mode), f'HF T5 {size} {mode}',
            bench='hf_t5_peer', size=size, mode=mode, batch=s.batch)


def main(argv):
  args = [a for a in argv if a != '--dry-run']
  dry = len(args) != len(argv)
  if len(args) != 1 or args[0].startswith('-'):
    print('error: usage: bash bench/gpu_check.sh [--dry-run] OUT_DIR',
          file=sys.stderr)
    return 2
  s = Settings.from_env()
  out_dir = args[0]
  jsonl = os.path.join(out_dir, 'gpu_check.jsonl')
  if not dry:
    os.makedirs(out_dir, exist_ok=True)
    if os.path.exists(jsonl):
      os.remove(jsonl)
    if not os.environ.get('GPU_CHECK_CACHE_DIR'):
      # Our own directory: emptied so the first point's compile is cold.
      shutil.rmtree(s.cache_dir, ignore_errors=True)
  r = Runner(s, jsonl, dry)
  plan(r)
  if dry:
    return 0
  gpu_report.write(r.lines, s, os.path.join(out_dir, 'gpu_check.md'))
  print(f'wrote {jsonl} and {os.path.join(out_dir, "gpu_check.md")}')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
