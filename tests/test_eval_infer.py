"""eval.py / infer.py on a tiny sentiment checkpoint made by the training loop.

The checkpoint is trained for a few steps (it learns to answer with a label,
so accuracy is a real number), then evaluated and decoded through the same
command lines `make run` uses, in subprocesses.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINETUNE = 'configs/finetune.py:tiny'
# A small, fast model: these dims are saved with the checkpoint, and eval /
# infer take them from it whatever --config says.
TINY = dict(emb_dim=32, num_heads=2, head_dim=16, mlp_dim=64,
            num_encoder_layers=1, num_decoder_layers=1)
STEPS = 30
EXAMPLES = 48  # validation examples seqio evaluates


def _config():
  from t5x_lite.configs import finetune  # pylint: disable=g-import-not-at-top
  c = finetune.get_config('tiny')
  for k, v in TINY.items():
    c.model[k] = v
  c.model.dropout_rate = 0.0
  c.task.feature_lengths.inputs = 32
  c.train.batch_size = 16
  c.train.num_steps = STEPS
  c.train.log_every_steps = 10
  c.optimizer.learning_rate = 1e-2
  c.checkpoint.every_steps = STEPS
  c.checkpoint.async_save = False
  c.eval.every_steps = STEPS
  c.eval.num_batches = 1
  c.eval.batch_size = 16
  c.eval.max_examples = EXAMPLES
  c.eval.num_decode_examples = 3
  return c


# Command-line twins of _config()'s eval-side settings (the model dims come
# from the checkpoint).
EVAL_FLAGS = ['--config.task.feature_lengths.inputs=32',
              '--config.eval.num_batches=1', '--config.eval.batch_size=16',
              f'--config.eval.max_examples={EXAMPLES}',
              '--config.eval.num_decode_examples=3']


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  from t5x_lite import loop  # pylint: disable=g-import-not-at-top
  w = str(tmp_path_factory.mktemp('eval_infer'))
  loop.train_and_evaluate(_config(), w)
  assert os.path.isdir(os.path.join(w, 'checkpoints', str(STEPS)))
  return w


def _run(module, *flags):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu',
             XLA_FLAGS='')
  return subprocess.run([sys.executable, '-m', module, *flags], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=300)


def test_eval_writes_results_json(workdir):
  proc = _run('t5x_lite.eval', f'--config={FINETUNE}', f'--workdir={workdir}',
              *EVAL_FLAGS)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'eval_results.json')) as f:
    results = json.load(f)
  assert results['step'] == STEPS and results['task'] == 'sentiment'
  acc = results['metrics']['sentiment']['accuracy']
  assert 0.0 <= acc <= 100.0
  assert np.isfinite(results['teacher_forced']['loss'])
  assert len(results['samples']) == 3
  assert 'prediction:' in proc.stdout and 'sentiment:' in proc.stdout
  assert os.listdir(os.path.join(workdir, 'eval'))  # TensorBoard events

  # The same accuracy from decoding those examples with the inference path:
  # seqio's metric really scored our greedy decodes.
  from t5x_lite import inference  # pylint: disable=g-import-not-at-top
  config = _config()
  examples = inference.task_examples(config, 'validation', EXAMPLES)
  records = inference.run(config, os.path.join(workdir, 'checkpoints'),
                          examples, batch_size=16)
  hits = [r['prediction'] == r['target'] for r in records]
  assert acc == pytest.approx(100.0 * np.mean(hits))
  # A few steps are enough to answer with labels, not random pieces.
  assert {r['prediction'] for r in records} <= {'fresh', 'rotten'}, records


def test_infer_prints_decoded_text(workdir):
  proc = _run('t5x_lite.infer', f'--config={FINETUNE}',
              f'--checkpoint={workdir}/checkpoints',
              '--input=sentiment: A gripping, beautifully acted film.',
              '--input=sentiment: Dull and far too long.')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [json.loads(l) for l in proc.stdout.splitlines() if l.strip()]
  assert [r['input'] for r in lines] == [
      'sentiment: A gripping, beautifully acted film.',
      'sentiment: Dull and far too long.']
  for r in lines:
    assert r['prediction'] in ('fresh', 'rotten')
    assert r['score'] < 0.0


def test_infer_score_and_task_split(workdir, tmp_path):
  from t5x_lite import inference  # pylint: disable=g-import-not-at-top
  config = _config()
  ckpt = os.path.join(workdir, 'checkpoints', str(STEPS))
  examples = inference.task_examples(config, 'validation', 4)
  assert all(e['input'].startswith('sentiment: ') for e in examples)
  scored = inference.run(config, ckpt, examples, mode='score')
  assert [r['target'] for r in scored] == [e['target'] for e in examples]
  for r in scored:
    assert r['log_likelihood'] < 0.0 and r['num_target_tokens'] >= 2
  # Text + targets from a JSONL file give the same numbers.
  path = tmp_path / 'in.jsonl'
  path.write_text('\n'.join(json.dumps({'input': e['input'],
                                        'target': e['target']})
                            for e in examples) + '\n')
  again = inference.run(config, ckpt, inference.file_examples(config,
                                                              str(path)),
                        mode='score')
  np.testing.assert_allclose([r['log_likelihood'] for r in again],
                             [r['log_likelihood'] for r in scored],
                             rtol=1e-4, atol=1e-4)


def test_missing_checkpoint_fails_clearly(workdir):
  missing = os.path.join(workdir, 'checkpoints', '999')
  proc = _run('t5x_lite.infer', f'--config={FINETUNE}',
              f'--checkpoint={missing}', '--input=sentiment: fine.')
  assert proc.returncode == 1
  err = proc.stderr.strip().splitlines()[-1]
  assert err.startswith('error:') and missing in err
  assert f'[{STEPS}]' in err  # the steps that do exist


def test_corrupt_checkpoint_fails_clearly(workdir, tmp_path):
  # pylint: disable=g-import-not-at-top
  from t5x_lite import checkpoint_inspection, checkpoints, model_loading
  ckpt_dir = tmp_path / 'checkpoints'
  shutil.copytree(os.path.join(workdir, 'checkpoints', str(STEPS)),
                  ckpt_dir / str(STEPS))
  step = str(ckpt_dir / str(STEPS))
  # Damage every array data file (half of each gone). Which OCDBT file holds
  # the params (rather than optimizer state, which a params-only restore never
  # reads) depends on write order, so damaging one file would be a coin flip.
  files = [os.path.join(r, f) for r, _, fs in os.walk(step) for f in fs
           if os.path.basename(r) == 'd']
  assert files
  for name in files:
    with open(name, 'r+b') as f:
      f.truncate(os.path.getsize(name) // 2)
  with pytest.raises(checkpoints.CheckpointError) as e:
    model_loading.load_model(_config(), step)
  assert step in str(e.value) and f'[{STEPS}]' in str(e.value)
  # An interrupted save (no commit marker) is named as such.
  os.remove(os.path.join(step, checkpoint_inspection.COMMIT_MARKER))
  with pytest.raises(checkpoints.CheckpointError, match='commit marker'):
    model_loading.load_model(_config(), step)
