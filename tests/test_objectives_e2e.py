"""Every pretraining/fine-tuning config of the objectives, end to end, shrunk.

Each config file builds, validates, gets a real batch from its task on the
shipped corpus (`make data`) and takes a few train steps on that batch with a
finite, falling loss. GLM's block positions reach the network; an ELECTRA run
through loop.train_and_evaluate logs its metrics, and its exported
discriminator restores into the classifier of configs/finetune_classifier.py
(what checkpoint.restore_from does).
"""
import importlib
import json
import os

import jax
import numpy as np
import pytest

from one_device_step import train_state_and_step

from t5x_lite import config as config_lib
from t5x_lite import models
from t5x_lite import objectives
from t5x_lite import partitioning

tasks = pytest.importorskip('t5x_lite.tasks')
corpora = tasks.corpora

pytestmark = pytest.mark.skipif(
    not (corpora.is_built('shakespeare') and corpora.is_built('sentiment')),
    reason='corpora not built: run `make data`')

BATCH, STEPS = 4, 6


def _load(path_arg):
  path, _, arg = path_arg.partition(':')
  module = importlib.import_module('t5x_lite.configs.' + path)
  return module.get_config(arg or None)


def _shrink(c):
  """The config's own task and objective, at test size."""
  m = c.model
  m.emb_dim, m.num_heads, m.head_dim, m.mlp_dim = 32, 2, 16, 64
  m.num_encoder_layers = m.num_decoder_layers = 1
  m.dropout_rate = 0.0
  fl = c.task.feature_lengths
  c.task.feature_lengths = dict(inputs=min(fl.inputs, 16),
                                targets=min(fl.targets, 16))
  c.train.batch_size = BATCH
  c.mesh.data = 1
  c.optimizer.schedule = 'constant'
  c.optimizer.warmup_steps = 0
  c.optimizer.learning_rate = 3e-3
  return c


CONFIGS = {
    'pretrain_bert:tiny': ('encoder_only', 'shakespeare_mlm'),
    'pretrain_electra:tiny': ('encoder_only', 'shakespeare_electra'),
    'pretrain_lm:causal': ('decoder_only', 'shakespeare_causal_lm'),
    'pretrain_lm:prefix': ('decoder_only', 'shakespeare_prefix_lm'),
    'pretrain_glm:tiny': ('decoder_only', 'shakespeare_glm'),
    'finetune_classifier:tiny': ('encoder_only', 'sentiment_classification'),
}


_BATCHES = {}


def _first_batch(name, c):
  if name not in _BATCHES:
    _BATCHES[name] = next(tasks.get_dataset(c, 'train', batch_size=BATCH,
                                            seed=0))
  return _BATCHES[name]


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_config_trains_with_falling_loss(name):
  c = _shrink(_load(name))
  config_lib.validate(c, num_devices=1)
  arch, task = CONFIGS[name]
  assert (c.model.arch, c.task.name) == (arch, task)
  batch = _first_batch(name, c)
  state, step = train_state_and_step(c)
  loss = []
  for _ in range(STEPS):
    state, m = step(state, batch, jax.random.PRNGKey(1))
    loss.append(float(m['loss']))
  assert np.all(np.isfinite(loss)), loss
  assert loss[-1] < 0.9 * loss[0], loss
  if name.startswith('pretrain_electra'):
    assert 0.0 < float(m['replaced_rate']) < 0.5
    assert float(m['disc_accuracy']) > 0.0


def test_glm_block_positions_reach_the_network():
  c = _shrink(_load('pretrain_glm:tiny'))
  batch = _first_batch('pretrain_glm:tiny', c)
  assert np.any(batch['decoder_block_positions'] > 1)
  model = objectives.build_model(c)
  params = model.init_params(jax.random.PRNGKey(0), batch)
  table = params['decoder']['block_position_embedder']['embedding']
  assert table.shape == (c.model.num_block_positions, c.model.emb_dim)
  logits = model.apply(params, batch)
  flat = dict(batch, decoder_block_positions=np.zeros_like(
      batch['decoder_block_positions']))
  part_b = batch['decoder_block_positions'] > 0
  diff = np.abs(np.asarray(logits - model.apply(params, flat))).max(-1)
  # Part A attends only to part A: untouched; part B sees its block index.
  assert diff[part_b].min() > 1e-4
  np.testing.assert_allclose(diff[~part_b & (batch['decoder_causal_attention']
                                             > 0)], 0.0, atol=1e-5)


def test_electra_loop_then_classifier_from_exported_discriminator(tmp_path):
  from t5x_lite.objectives import electra
  from t5x_lite import loop
  # The loop runs on every (fake) device: a batch of 8 gives each one row.
  c = _shrink(_load('pretrain_electra:tiny'))
  c.mesh.data = -1
  c.train.batch_size = 8
  c.train.num_steps = 2
  c.eval.every_steps = 2
  c.eval.num_batches = 1
  c.checkpoint.every_steps = 2
  c.checkpoint.async_save = False
  work = str(tmp_path / 'electra')
  result = loop.train_and_evaluate(c, work)
  assert result['step'] == 2
  with open(os.path.join(work, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  evals = [r for r in records if 'eval/disc_accuracy' in r]
  assert evals and 0.0 < evals[-1]['eval/replaced_rate'] < 0.5
  np.testing.assert_allclose(
      evals[-1]['eval/disc_baseline_accuracy'],
      1.0 - evals[-1]['eval/replaced_rate'], rtol=1e-5)

  # The eval entrypoint reports the discriminator's numbers too.
  from t5x_lite import evaluation
  printed = []
  tf = evaluation.evaluate(c, work, write=False,
                           print_fn=printed.append)['teacher_forced']
  assert 0.0 < tf['replaced_rate'] < 0.5
  np.testing.assert_allclose(tf['disc_baseline_accuracy'],
                             1.0 - tf['replaced_rate'], rtol=1e-5)
  assert 0.0 <= tf['disc_accuracy'] <= 1.0
  assert f'disc_accuracy {tf["disc_accuracy"]:.4f}' in printed[0]

  # What checkpoint.restore_from does for the classifier fine-tuning config.
  from t5x_lite import params_checkpoints
  export = electra.export_discriminator(work, str(tmp_path / 'disc'))
  ft = _shrink(_load('finetune_classifier:tiny'))
  ft.task.feature_lengths = c.task.feature_lengths
  classifier = objectives.build_model(ft)
  abstract = partitioning.unbox(classifier.abstract_params(
      classifier.input_shapes(ft.task.feature_lengths, 1)))
  restored = params_checkpoints.restore_params(export, abstract)
  pretrained = params_checkpoints.restore_params(work)['discriminator']
  for a, b in zip(jax.tree_util.tree_leaves(restored),
                  jax.tree_util.tree_leaves(pretrained)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with open(os.path.join(export, 'config.json')) as f:
    assert json.load(f)['objective']['name'] == ''
