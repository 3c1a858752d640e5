"""Back translation: the split, its tasks, the synthetic pairs, the script.

The fast tests check the seeded split of translate_en_de/train (disjoint,
covering, fixed), that the parallel-half tasks read exactly that half and
score on translate_en_de's own test pairs, and that register_synthetic
tags synthetic inputs only. The slow one runs scripts/back_translate.py end
to end at a tiny size (a few steps, two dozen sentences) through the normal
entrypoints, then interrupts-and-resumes its last training stage: the rerun
skips the finished stages and the resumed steps repeat the same losses.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import seqio

from e2e_runs import jax_cache  # pylint: disable=unused-import
from e2e_runs import NEEDS_DATA
from e2e_runs import subprocess_env
from t5x_lite import tasks
from t5x_lite.tasks import back_translation as bt
from t5x_lite.tasks import corpora

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_corpus = pytest.mark.skipif(
    not corpora.is_built('translate_en_de'),
    reason='translate_en_de was not built (python -m data.build)')
LENGTHS = {'inputs': 128, 'targets': 128}  # no truncation here


def _texts(task_name, split, num):
  task = seqio.TaskRegistry.get(task_name)
  vocab = task.output_features['targets'].vocabulary
  ds = task.get_dataset(LENGTHS, split=split, shuffle=False, num_epochs=1)
  return [(vocab.decode(ex['inputs'].tolist()[:-1]),
           vocab.decode(ex['targets'].tolist()[:-1]))
          for ex in ds.take(num).as_numpy_iterator()]


# ---- the split -------------------------------------------------------------------


def test_split_is_disjoint_covering_and_fixed_by_its_seed():
  parallel, mono = bt.split_indices(1001)
  assert len(mono) == 500 and len(parallel) == 501
  assert not set(parallel) & set(mono)
  assert sorted(np.concatenate([parallel, mono]).tolist()) == list(range(1001))
  assert (np.diff(parallel) > 0).all()  # file order
  again = bt.split_indices(1001)
  assert (again[0] == parallel).all() and (again[1] == mono).all()
  other = bt.split_indices(1001, seed=1)
  assert set(other[1].tolist()) != set(mono.tolist())
  # Golden: the legacy RandomState stream is fixed across numpy versions;
  # if this moves, every recorded back-translation run's split moved too.
  assert mono[:5].tolist() == np.random.RandomState(0).permutation(
      1001)[:5].tolist()
  assert bt.split_indices(10)[1].tolist() == [2, 8, 4, 9, 1]


@NEEDS_DATA
@needs_corpus
def test_parallel_tasks_read_exactly_the_parallel_half():
  lines = bt.train_lines()
  assert len(lines) == corpora.num_examples('translate_en_de')['train']
  pairs = bt.parallel_pairs()
  german = bt.monolingual_german()
  assert len(pairs) == bt.num_parallel() == len(lines) - len(german)
  source = seqio.TaskRegistry.get(bt.FORWARD_TASK).source
  assert source.num_input_examples('train') == len(pairs)
  read = [l.decode() for l in source.get_dataset(
      'train', shuffle=False).as_numpy_iterator()]
  assert read == pairs
  # Monolingual German: the German of exactly the other lines.
  _, mono = bt.split_indices(len(lines))
  assert german[:3] == [lines[i].split('\t')[1] for i in mono[:3]]
  assert not set(pairs) & {lines[i] for i in mono}
  assert bt.monolingual_german(7) == german[:7]

  en, de = pairs[0].split('\t')
  assert _texts(bt.REVERSE_TASK, 'train', 1) == [
      (bt.DE_EN_PREFIX + de, en)]
  assert _texts(bt.FORWARD_TASK, 'train', 1) == [
      (bt.EN_DE_PREFIX + en, de)]
  # Scored on translate_en_de's own test pairs (reversed for de -> en).
  real = _texts('translate_en_de', 'test', 3)
  assert _texts(bt.FORWARD_TASK, 'test', 3) == real
  assert [(i[len(bt.DE_EN_PREFIX):], t) for i, t in _texts(
      bt.REVERSE_TASK, 'test', 3)] == [(t, i[len(bt.EN_DE_PREFIX):])
                                       for i, t in real]
  assert set(bt.NAMES) <= set(tasks.registered_names())


# ---- synthetic pairs -------------------------------------------------------------


def test_write_synthetic_normalizes_whitespace_and_drops_empty_sides(tmp_path):
  path = str(tmp_path / 'synthetic.tsv')
  n = bt.write_synthetic(path, ['a\tb  c', '', 'ok'], ['x\ny', 'z', ' '])
  assert n == 1
  with open(path) as f:
    assert f.read() == 'a b c\tx y\n'
  with pytest.raises(ValueError, match='2 English sentences for 1'):
    bt.write_synthetic(path, ['a', 'b'], ['c'])


@NEEDS_DATA
@needs_corpus
def test_register_synthetic_tags_synthetic_inputs_only(tmp_path):
  path = tmp_path / 'synthetic.tsv'
  path.write_text('the house\tdas Haus\na good day\tein guter Tag\n')
  mixture = bt.register_synthetic(str(path), name='bt_test_synthetic',
                                  mixture='bt_test_mixture')
  try:
    assert _texts('bt_test_synthetic', 'train', 2) == [
        (bt.EN_DE_PREFIX + '<extra_id_0> the house', 'das Haus'),
        (bt.EN_DE_PREFIX + '<extra_id_0> a good day', 'ein guter Tag')]
    # The tag is one piece of the corpus vocabulary.
    vocab = tasks.get_vocabulary('bt_test_synthetic')
    assert len(vocab.encode(bt.DEFAULT_TAG)) == 1
    assert _texts('bt_test_synthetic', 'test', 2) == _texts(
        'translate_en_de', 'test', 2)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert rates == {bt.FORWARD_TASK: float(bt.num_parallel()),
                     'bt_test_synthetic': 2.0}
    assert tasks.objective_of('bt_test_mixture') == 'text_to_text'
    bt.register_synthetic(str(path), name='bt_test_synthetic',
                          mixture='bt_test_mixture', tag='')
    assert _texts('bt_test_synthetic', 'train', 1) == [
        (bt.EN_DE_PREFIX + 'the house', 'das Haus')]
  finally:
    seqio.MixtureRegistry.remove('bt_test_mixture')
    seqio.TaskRegistry.remove('bt_test_synthetic')

  path.write_text('only one column\n')
  with pytest.raises(ValueError, match=r'synthetic.tsv:1: expected'):
    bt.register_synthetic(str(path), name='bt_test_synthetic')
  with pytest.raises(FileNotFoundError, match='back_translate.py'):
    bt.register_synthetic(str(tmp_path / 'missing.tsv'))


# ---- the script, end to end ---------------------------------------------------------

STEPS = 4
NUM_MONO = 24
# A smaller model than the recipe's and one CPU device: the test checks the
# plumbing, not the BLEU.
SCRIPT_FLAGS = [
    f'--steps={STEPS}', f'--num_monolingual={NUM_MONO}', '--batch_size=16',
    '--eval_max_examples=16', '--decode=beam', '--beam_size=2',
    '--decode_batch_size=24', '--override=checkpoint.every_steps=2',
    '--override=checkpoint.async_save=False', '--override=eval.num_batches=1',
    '--override=eval.num_decode_examples=0',
    '--override=train.log_every_steps=1',
    '--override=model.emb_dim=32', '--override=model.num_heads=2',
    '--override=model.head_dim=16', '--override=model.mlp_dim=64',
    '--override=model.num_encoder_layers=1',
    '--override=model.num_decoder_layers=1']


def _script(workdir, cache):
  env = subprocess_env(cache)
  env['XLA_FLAGS'] = '--xla_backend_optimization_level=0'  # one device
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'scripts', 'back_translate.py'),
       f'--workdir={workdir}'] + SCRIPT_FLAGS, env=env, cwd=ROOT,
      capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout + proc.stderr


def _json(path):
  with open(path) as f:
    return json.load(f)


def test_script_usage_errors_are_one_line_and_exit_2(tmp_path):
  script = [sys.executable, os.path.join(ROOT, 'scripts', 'back_translate.py'),
            f'--workdir={tmp_path}']
  proc = subprocess.run(script + ['--steps=0'], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'back_translate: --steps=0 and --num_monolingual=3000 must both be '
      'positive.']
  # A rerun with other settings in the same workdir stops before any stage.
  (tmp_path / 'stages.json').write_text(json.dumps({'reverse': {
      'size': 'tiny', 'steps': 7, 'batch_size': 32, 'seed': 0,
      'overrides': []}}))
  proc = subprocess.run(script + ['--steps=8'], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("back_translate: stage 'reverse' in ")
  assert 'ran with other settings (steps: [7] -> [8]); use a fresh ' in last
  assert not (tmp_path / 'reverse').exists()


@pytest.mark.slow
@NEEDS_DATA
@needs_corpus
def test_script_runs_the_recipe_end_to_end_and_resumes(tmp_path, jax_cache):
  workdir = str(tmp_path / 'bt')
  _script(workdir, jax_cache)

  results = _json(os.path.join(workdir, 'results.json'))
  rows = results['rows']
  assert [r['eval'] for r in rows] == [
      'translate_de_en_parallel/test', 'translate_en_de/test',
      'translate_en_de/test']
  for r in rows:
    assert r['step'] == STEPS and 0.0 <= r['bleu'] <= 100.0, r
    assert np.isfinite(r['teacher_forced_loss'])
  for stage in ('reverse', 'forward_real', 'forward_mixed'):
    assert os.path.isdir(os.path.join(workdir, stage, 'checkpoints',
                                      str(STEPS)))
  # The synthetic pairs: the reverse model's English for the first
  # NUM_MONO monolingual German sentences, in order.
  german = bt.monolingual_german(NUM_MONO)
  pairs = bt.read_tsv_lines(os.path.join(workdir, 'synthetic.tsv'))
  assert 0 < len(pairs) == results['synthetic']['synthetic_pairs'] <= NUM_MONO
  # (a pair whose English decoded empty is left out, order kept)
  remaining = iter(' '.join(d.split()) for d in german)
  assert all(any(g == d for d in remaining)
             for g in (p.split('\t')[1] for p in pairs))
  # The mixed run trained the mixture its task module registers.
  saved = _json(os.path.join(workdir, 'forward_mixed', 'config.json'))
  assert saved['task']['name'] == bt.MIXTURE
  assert 'back_translated_tasks' in saved['task']['modules']
  assert rows[2]['synthetic_pairs'] == len(pairs)

  # Interrupt the last training stage after its step-2 checkpoint: the rerun
  # skips every finished stage and resumes that one from step 2.
  mixed = os.path.join(workdir, 'forward_mixed')
  shutil.rmtree(os.path.join(mixed, 'checkpoints', str(STEPS)))
  log = _script(workdir, jax_cache)
  for stage in ('reverse', 'forward_real'):
    assert f'{stage}: step {STEPS} checkpoint exists, skipped' in log
  assert 'synthetic.tsv exists, skipped' in log
  assert f'Resumed from {mixed}/checkpoints/2.' in log
  assert os.path.isdir(os.path.join(mixed, 'checkpoints', str(STEPS)))
  # Exact resume: steps 3 and 4 redone give the same losses and gradient
  # norms as the first time (metrics.abandoned.jsonl keeps those records).
  first = _records(os.path.join(mixed, 'metrics.abandoned.jsonl'))
  resumed = _records(os.path.join(mixed, 'metrics.jsonl'))
  assert sorted(first) == [3, 4] and set(first) <= set(resumed)
  for step, record in first.items():
    assert record == {k: resumed[step][k] for k in record}, step
  assert _json(os.path.join(workdir, 'results.json'))['rows'] == rows


def _records(path):
  """{step: its loss, grad_norm and eval/loss} from a metrics.jsonl; steps
  after 2 only (the redone ones)."""
  out = {}
  with open(path) as f:
    for line in f:
      r = json.loads(line)
      if r['step'] > 2:
        out.setdefault(r['step'], {}).update(
            {k: r[k] for k in ('loss', 'grad_norm', 'eval/loss') if k in r})
  return out
