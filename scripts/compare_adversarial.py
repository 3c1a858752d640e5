r"""Sentiment fine-tuning with and without adversarial embeddings, equal steps.

    python scripts/compare_adversarial.py       # ~30 min on a 2-core CPU
    python scripts/compare_adversarial.py --methods=off,fgm --seed_list=0,1,2 \
        --steps=300 --results=runs/adversarial/compare.json

Every run is the normal entrypoint,
  python -m t5x_lite.train --config=configs/finetune_classifier.py:tiny
      --config.train.num_steps=STEPS --config.train.seed=SEED
      --config.adversarial.method=... --workdir=runs/adversarial/<method>_s<seed>
from scratch (the tiny pooled encoder classifier on sentiment_classification),
so every method sees the same data order, init, optimizer and dropout per
seed, and only the adversarial loss differs. Reported per method over the
seeds (mean ± sample std):
  test accuracy   the final checkpoint's argmax on the whole `test` split
                  (1539 snippets; scripts/compare_objectives.py's
                  test_accuracy, reused);
  val accuracy    the run's own last eval (the whole validation split);
  step time       the mean of metrics.jsonl's step_time_s over the run (the
                  first window starts after compilation), and its ratio to
                  the runs without adversarial training;
  passes          adversarial_passes from the step metrics.
Methods run interleaved (every method of seed 0, then seed 1, ...), so that a
change in the machine's load falls on all of them alike.
"""
import json
import os
import subprocess
import sys
import time
import types

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

_METHODS = flags.DEFINE_string(
    'methods', 'off,fgm,pgd', 'Comma-separated: off | fgm | pgd.')
_SEEDS = flags.DEFINE_string('seed_list', '0,1,2', 'Comma-separated seeds.')
_STEPS = flags.DEFINE_integer('steps', 300, 'Fine-tuning steps (every run).')
_EPSILON = flags.DEFINE_float('epsilon', 1.0, 'adversarial.epsilon.')
_PGD_STEPS = flags.DEFINE_integer('pgd_steps', 2, 'adversarial.steps of pgd.')
_PGD_STEP_SIZE = flags.DEFINE_float('pgd_step_size', 0.5,
                                    'adversarial.step_size of pgd.')
_CONFIG = flags.DEFINE_string('config_file',
                              'configs/finetune_classifier.py:tiny',
                              'The fine-tuning config (a pooled classifier).')
_WORKDIRS = flags.DEFINE_string('workdirs', 'runs/adversarial',
                                'Parent of every run\'s workdir.')
_RESULTS = flags.DEFINE_string('results', 'runs/adversarial/compare.json',
                               'JSON results file.')


def _overrides(method, seed):
  args = [f'--config.train.num_steps={_STEPS.value}',
          f'--config.train.seed={seed}',
          # The recipe's 10% warmup, of these steps.
          f'--config.optimizer.warmup_steps={_STEPS.value // 10}',
          f'--config.eval.every_steps={_STEPS.value}',
          f'--config.checkpoint.every_steps={_STEPS.value}',
          '--config.mesh.data=1']
  if method != 'off':
    args += [f'--config.adversarial.method={method}',
             f'--config.adversarial.epsilon={_EPSILON.value}']
  if method == 'pgd':
    args += [f'--config.adversarial.steps={_PGD_STEPS.value}',
             f'--config.adversarial.step_size={_PGD_STEP_SIZE.value}']
  return args


def _config(args):
  """The config the run trained (its file, then the same overrides)."""
  from t5x_lite import cli
  return cli.apply_overrides(
      cli.config_from_file(os.path.join(ROOT, _CONFIG.value)), args)


def train(method, seed):
  """Runs one fine-tuning through the entrypoint; returns its workdir and
  the command."""
  workdir = os.path.join(ROOT, _WORKDIRS.value, f'{method}_s{seed}')
  cmd = [sys.executable, '-m', 't5x_lite.train',
         f'--config={_CONFIG.value}', f'--workdir={workdir}',
         *_overrides(method, seed)]
  t0 = time.time()
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if r.returncode:
    raise RuntimeError(f'{" ".join(cmd)} failed:\n{r.stderr[-3000:]}')
  return workdir, ' '.join(cmd[1:]), time.time() - t0


def summarize_run(workdir):
  from t5x_lite import metrics as metrics_lib
  records = list(metrics_lib.read_metrics(workdir))
  train = [r for r in records if 'loss' in r]
  evals = [r for r in records if 'eval/accuracy' in r]
  times = [r['step_time_s'] for r in train if r.get('step_time_s')]
  return {
      'step_time_s': float(np.mean(times)),
      'passes': float(train[-1].get('adversarial_passes', 1.0)),
      'adversarial_loss': train[-1].get('adversarial_loss'),
      'train_loss_last': train[-1]['loss'],
      'val_accuracy': evals[-1]['eval/accuracy'],
  }


def test_accuracy(workdir, args):
  """compare_objectives.test_accuracy of the run's final params."""
  from scripts import compare_objectives
  from t5x_lite import objectives
  from t5x_lite import params_checkpoints
  config = _config(args)
  runner = types.SimpleNamespace(model=objectives.build_model(config),
                                 config=config, accuracy_fn=None)
  params = params_checkpoints.restore_params(
      os.path.join(workdir, 'checkpoints'))
  acc, n, majority = compare_objectives.test_accuracy(
      runner, 'encoder_only', params)
  return acc, n, majority


def _mean_std(xs):
  xs = np.asarray(xs, np.float64)
  return float(xs.mean()), float(xs.std(ddof=1)) if len(xs) > 1 else 0.0


def table(results) -> str:
  base = results['methods'].get('off')
  base_time = base['step_time_s'][0] if base else None
  lines = ['| method | sentiment test accuracy (mean ± std) | per seed | '
           'val accuracy | step time, ms (mean ± std) | × off | passes/step |',
           '|---|---|---|---|---|---|---|']
  for method, m in results['methods'].items():
    acc, sd = m['test_accuracy']
    per = ', '.join(f'{100 * r["test_accuracy"]:.1f}' for r in m['runs'])
    va, vsd = m['val_accuracy']
    t, tsd = m['step_time_s']
    ratio = f'{t / base_time:.2f}' if base_time else '—'
    lines.append(f'| {m["label"]} | {100 * acc:.1f} ± {100 * sd:.1f} | {per} '
                 f'| {100 * va:.1f} ± {100 * vsd:.1f} | {1e3 * t:.1f} ± '
                 f'{1e3 * tsd:.1f} | {ratio} | {m["passes"]:.0f} |')
  return '\n'.join(lines)


def _label(method):
  if method == 'off':
    return 'off'
  if method == 'fgm':
    return f'fgm (epsilon {_EPSILON.value:g}, l2)'
  return (f'pgd (epsilon {_EPSILON.value:g}, {_PGD_STEPS.value} steps of '
          f'{_PGD_STEP_SIZE.value:g}, l2)')


def main(argv):
  del argv
  methods = [m for m in _METHODS.value.split(',') if m]
  bad = [m for m in methods if m not in ('off', 'fgm', 'pgd')]
  if bad:
    raise app.UsageError(f'unknown methods {bad}; use off, fgm, pgd')
  seeds = [int(s) for s in _SEEDS.value.split(',') if s.strip()]
  runs = {m: [] for m in methods}
  t_start = time.time()
  for seed in seeds:
    for method in methods:
      workdir, cmd, secs = train(method, seed)
      rec = summarize_run(workdir)
      acc, n, majority = test_accuracy(workdir, _overrides(method, seed))
      rec.update(seed=seed, test_accuracy=acc, test_examples=n,
                 majority_class_accuracy=majority, command=cmd, seconds=secs)
      runs[method].append(rec)
      with open(os.path.join(ROOT, _RESULTS.value) + '.partial', 'w') as f:
        json.dump(runs, f, indent=1, default=float)  # in case it is stopped
      print(f'{method:4s} seed {seed}: test accuracy {acc:.4f} ({n}), val '
            f'{rec["val_accuracy"]:.4f}, step {1e3 * rec["step_time_s"]:.1f} '
            f'ms, {rec["passes"]:.0f} passes, {secs:.0f}s', flush=True)
  results = {'settings': {
      'config': _CONFIG.value, 'steps': _STEPS.value, 'seeds': seeds,
      'epsilon': _EPSILON.value, 'pgd_steps': _PGD_STEPS.value,
      'pgd_step_size': _PGD_STEP_SIZE.value}, 'methods': {}}
  for method in methods:
    rs = runs[method]
    results['methods'][method] = {
        'label': _label(method), 'runs': rs,
        'test_accuracy': _mean_std([r['test_accuracy'] for r in rs]),
        'val_accuracy': _mean_std([r['val_accuracy'] for r in rs]),
        'step_time_s': _mean_std([r['step_time_s'] for r in rs]),
        'passes': rs[0]['passes']}
  results['seconds'] = time.time() - t_start
  md = table(results)
  majority = runs[methods[0]][0]['majority_class_accuracy']
  header = (f'{_CONFIG.value}, {_STEPS.value} steps from scratch, seeds '
            f'{seeds}; test split: {runs[methods[0]][0]["test_examples"]} '
            f'snippets (majority label {100 * majority:.1f}%); '
            f'{results["seconds"] / 60:.1f} min total.')
  results['markdown'] = header + '\n\n' + md
  print('\n' + results['markdown'], flush=True)
  out = os.path.join(ROOT, _RESULTS.value)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(results, f, indent=1, default=float)
  print(f'\nwrote {out}')


if __name__ == '__main__':
  app.run(main)
