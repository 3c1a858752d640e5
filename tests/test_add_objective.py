"""A new objective plugs in from a user module, with no edit of t5x_lite/.

examples/token_deletion.py is the README's "Add an objective" walkthrough:
one module that registers BART's token deletion and a task over the shipped
corpus. This test checks the three things the walkthrough promises: the
objective is looked up by name (config validation, the schema's `objective`
group, the task's feature converter), its batches are what it says
(inputs = the chunk with ~15% of its tokens deleted, in order), and the
normal train step trains it.
"""
import jax
import numpy as np
import pytest

from one_device_step import train_state_and_step

from t5x_lite.configs import local_tiny
from t5x_lite import config as config_lib
from t5x_lite import objectives

tasks = pytest.importorskip('t5x_lite.tasks')
pytestmark = pytest.mark.skipif(not tasks.corpora.is_built('shakespeare'),
                                reason='corpora not built: run `make data`')


@pytest.fixture(scope='module')
def config():
  from examples import token_deletion  # pylint: disable=g-import-not-at-top
  c = local_tiny.get_config()
  c.task.name = 'shakespeare_token_deletion'
  c.task.feature_lengths = dict(inputs=64, targets=64)
  c.task.pack = False
  c.model.emb_dim, c.model.num_heads, c.model.head_dim = 32, 2, 16
  c.model.mlp_dim = 64
  c.train.batch_size = 8
  c.optimizer.name = 'adamw'
  c.optimizer.schedule, c.optimizer.warmup_steps = 'constant', 0
  c.optimizer.learning_rate = 3e-3
  assert token_deletion.OBJECTIVE.name in objectives.names()
  return c


def test_the_new_objective_is_looked_up_by_name(config):
  assert tasks.objective_of(config.task.name) == 'token_deletion'
  assert tasks.layout_of(config.task.name) == 'inputs_targets'
  c = config.copy_and_resolve_references()
  tasks.resolve_objective(c)
  assert c.objective.name == 'token_deletion'
  config_lib.validate(c, num_devices=1)
  c.model.arch = 'decoder_only'
  with pytest.raises(config_lib.ConfigError, match='encoder_decoder'):
    config_lib.validate(c, num_devices=1)


def _is_subsequence(short, long):
  it = iter(long)
  return all(t in it for t in short)


def test_its_batches_delete_about_15_percent_in_order(config):
  batch = next(tasks.get_dataset(config, 'train', batch_size=64,
                                 shuffle=False))
  kept = total = 0
  for inputs, targets in zip(batch['encoder_input_tokens'],
                             batch['decoder_target_tokens']):
    inputs, targets = inputs[inputs > 1], targets[targets > 1]  # no pad/EOS
    assert _is_subsequence(inputs.tolist(), targets.tolist())
    kept += len(inputs)
    total += len(targets)
  deleted = 1 - kept / total
  print(f'token_deletion: {deleted:.3f} of {total} tokens deleted')
  assert 0.12 < deleted < 0.18, deleted


def test_the_normal_train_step_trains_it(config):
  batch = next(tasks.get_dataset(config, 'train', batch_size=8, seed=0))
  state, step = train_state_and_step(config)
  losses = []
  for _ in range(8):
    state, m = step(state, batch, jax.random.PRNGKey(1))
    losses.append(float(m['loss']))
  assert np.all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
