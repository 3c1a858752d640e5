"""Adversarial training on the embeddings (t5x_lite/adversarial.py).

On real batches of the shipped sentiment tasks and real (tiny) models: FGM's
perturbation has norm epsilon per example (l2) or per element (linf) and
raises the loss of the batch it was made for; PGD stays inside the ball and
with one step of size epsilon is FGM; the gradient the train step gets equals
a hand computation of d(clean + weight * adversarial)/d params with delta held
constant; method '' leaves the model, its params and its logits as they were;
an encoder-decoder perturbs its encoder input (the decoder's only with
perturb_decoder); bad settings fail in one line. The slow test trains through
`python -m t5x_lite.train` with FGM on (checkpoints, a bit-exact resume, the
step metrics) and evaluates with `python -m t5x_lite.eval`.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e2e_runs import jax_cache  # pylint: disable=unused-import  (a fixture)
from e2e_runs import NEEDS_DATA
from e2e_runs import subprocess_env

from t5x_lite import adversarial
from t5x_lite import config as config_lib
from t5x_lite import metrics as metrics_lib
from t5x_lite import objectives
from t5x_lite import params_checkpoints
from t5x_lite.configs import finetune
from t5x_lite.configs import finetune_classifier
from t5x_lite.model_config import ConfigError

tasks = pytest.importorskip('t5x_lite.tasks')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 4
pytestmark = NEEDS_DATA


def _shrink(c, **adv):
  m = c.model
  m.emb_dim, m.num_heads, m.head_dim, m.mlp_dim = 32, 2, 16, 64
  m.num_encoder_layers = m.num_decoder_layers = 1
  m.dropout_rate = 0.0
  c.task.feature_lengths = dict(inputs=32, targets=4)
  c.train.batch_size = BATCH
  c.mesh.data = 1
  for k, v in adv.items():
    c.adversarial[k] = v
  return c


def _classifier(**adv):
  return _shrink(finetune_classifier.get_config('tiny'), **adv)


def _text_to_text(**adv):
  return _shrink(finetune.get_config('tiny'), **adv)


_CACHE = {}


def _model_params_batch(config):
  """(wrapped model, init params, a real train batch) of `config`."""
  config_lib.validate(config, num_devices=1)
  model = adversarial.for_training(objectives.build_model(config), config)
  key = (config.task.name, config.model.arch)
  if key not in _CACHE:
    batch = next(tasks.get_dataset(config, 'train', batch_size=BATCH,
                                   shuffle=False))
    params = model.init_params(
        jax.random.PRNGKey(0),
        model.input_shapes(config.task.feature_lengths, 1))
    _CACHE[key] = params, {k: jnp.asarray(v) for k, v in batch.items()}
  return (model,) + _CACHE[key]


def _perturbation_and_losses(model, params, batch):
  """(delta tree, clean loss sum, loss sum with delta) without dropout."""
  @jax.jit
  def run(params, batch):
    delta = model.perturbation(params, batch)
    clean = model.inner.loss_terms(params, batch, None,
                                   enable_dropout=False)[0]
    adv = model.loss_at(params, batch, None, delta, enable_dropout=False)[0]
    return delta, clean, adv
  return run(params, batch)


# ---- the perturbation -----------------------------------------------------------


@pytest.mark.parametrize('norm', ['l2', 'linf'])
def test_fgm_perturbation_has_norm_epsilon_and_raises_the_loss(norm):
  eps = 0.5
  model, params, batch = _model_params_batch(
      _classifier(method='fgm', epsilon=eps, norm=norm))
  delta, clean, adv = _perturbation_and_losses(model, params, batch)
  d = np.asarray(delta['encoder']['token_embeddings'])  # [batch, len, embed]
  assert d.shape == (BATCH, 32, 32)
  if norm == 'l2':  # over each example's whole embedded sequence
    np.testing.assert_allclose(np.sqrt((d ** 2).sum(axis=(1, 2))),
                               [eps] * BATCH, rtol=1e-5)
  else:  # epsilon * sign(gradient): every element at +-epsilon or 0
    np.testing.assert_allclose(np.abs(d).max(axis=(1, 2)), [eps] * BATCH,
                               rtol=1e-6)
    assert set(np.unique(np.abs(d))) <= {0.0, np.float32(eps)}
  # Padding has no gradient, so it is never perturbed.
  pad = np.asarray(batch['encoder_input_tokens']) == 0
  assert pad.any() and not np.abs(d[pad]).any()
  assert float(adv) > float(clean) + 1e-3, (float(clean), float(adv))


def test_pgd_stays_in_the_ball_and_one_step_of_epsilon_is_fgm():
  eps = 0.5
  model, params, batch = _model_params_batch(
      _classifier(method='pgd', epsilon=eps, steps=3, step_size=0.2))
  delta, clean, adv = _perturbation_and_losses(model, params, batch)
  d = np.asarray(delta['encoder']['token_embeddings'])
  norms = np.sqrt((d ** 2).sum(axis=(1, 2)))
  assert np.all(norms <= eps * (1 + 1e-5)) and np.all(norms > 0.2)
  assert float(adv) > float(clean)

  fgm, _, _ = _model_params_batch(_classifier(method='fgm', epsilon=eps))
  pgd1, _, _ = _model_params_batch(
      _classifier(method='pgd', epsilon=eps, steps=1, step_size=eps))
  sums = [jax.jit(lambda p, b, m=m: m.loss_terms(p, b, None,
                                                 enable_dropout=False)[1])(
                                                     params, batch)
          for m in (fgm, pgd1)]
  for k in sums[0]:
    np.testing.assert_allclose(sums[0][k], sums[1][k], rtol=1e-6, err_msg=k)
  assert float(sums[0]['adversarial_passes_num']) == 2.0
  assert float(sums[0]['adversarial_loss_num']) > float(sums[0]['loss'])


def test_train_gradient_is_clean_plus_weighted_adversarial_at_fixed_delta():
  """The custom VJP's gradient == jax.grad of the FGM objective written out
  by hand, delta computed first and held constant (no second order)."""
  weight = 0.5
  model, params, batch = _model_params_batch(
      _classifier(method='fgm', epsilon=1.0, weight=weight))
  inner = model.inner

  @jax.jit
  def both(params, batch):
    got, sums = jax.grad(
        lambda p: model.loss_terms(p, batch, None, enable_dropout=False),
        has_aux=True)(params)
    delta = jax.lax.stop_gradient(model.perturbation(params, batch))
    want = jax.grad(lambda p: (
        inner.loss_terms(p, batch, None, enable_dropout=False)[0] +
        weight * model.loss_at(p, batch, None, delta,
                               enable_dropout=False)[0]))(params)
    return got, want, sums

  got, want, sums = both(params, batch)
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                          jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-7,
                               err_msg=jax.tree_util.keystr(path))
  # `loss` stays the clean one (comparable with runs without adversarial).
  clean = inner.loss_terms(params, batch, None, enable_dropout=False)[1]
  np.testing.assert_allclose(sums['loss'], clean['loss'], rtol=1e-6)


# ---- off, sites, checks ---------------------------------------------------------


def test_off_leaves_model_params_and_logits_unchanged():
  c = _classifier()  # method ''
  model, params, batch = _model_params_batch(c)
  assert type(model).__name__ == 'EncoderOnlyModel'  # not wrapped
  assert model is adversarial.wrap(model, adversarial.AdversarialOptions())
  assert 'perturbations' not in str(jax.tree_util.tree_structure(params))
  # Zeros passed to the perturb site == nothing passed, bit for bit.
  wrapped = adversarial.wrap(model, adversarial.options_from(
      _classifier(method='fgm')))
  shapes, _ = wrapped.perturbation_shapes(params, batch, None, False)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  plain = model.loss_terms(params, batch, None, enable_dropout=False)[1]
  zeroed = wrapped.loss_at(params, batch, None, zeros,
                           enable_dropout=False)[1]
  for k in plain:
    np.testing.assert_array_equal(plain[k], zeroed[k], err_msg=k)
  logits = model.apply(params, batch)
  again = model.apply(params, batch)  # the clean path of a wrapped model too
  np.testing.assert_array_equal(logits, wrapped.apply(params, batch))
  np.testing.assert_array_equal(logits, again)


@pytest.mark.parametrize('perturb_decoder', [False, True])
def test_encoder_decoder_perturbs_the_encoder_input(perturb_decoder):
  model, params, batch = _model_params_batch(_text_to_text(
      method='fgm', epsilon=0.5, perturb_decoder=perturb_decoder))
  delta, clean, adv = _perturbation_and_losses(model, params, batch)
  enc = np.asarray(delta['encoder']['token_embeddings'])
  dec = np.asarray(delta['decoder']['token_embeddings'])
  np.testing.assert_allclose(np.sqrt((enc ** 2).sum(axis=(1, 2))),
                             [0.5] * BATCH, rtol=1e-5)
  if perturb_decoder:
    np.testing.assert_allclose(np.sqrt((dec ** 2).sum(axis=(1, 2))),
                               [0.5] * BATCH, rtol=1e-5)
  else:
    assert not dec.any()
  assert float(adv) > float(clean)


@pytest.mark.parametrize('key,value,words', [
    ('method', 'vat', "'fgm'"),
    ('epsilon', 0.0, 'adversarial.epsilon=0.0 must be > 0'),
    ('steps', 0, 'adversarial.steps=0 must be >= 1'),
    ('norm', 'l1', 'adversarial.norm=l2'),
    ('steps', 3, 'method=pgd'),  # fgm takes one step
    ('weight', -1.0, 'adversarial.weight=-1.0'),
])
def test_bad_settings_fail_in_one_line_naming_the_fix(key, value, words):
  c = _classifier(method='fgm')
  c.adversarial[key] = value
  with pytest.raises(ConfigError) as e:
    config_lib.validate(c, num_devices=1)
  assert words in str(e.value) and '\n' not in str(e.value)


def test_a_model_that_runs_its_network_twice_is_refused():
  from t5x_lite.configs import pretrain_electra  # pylint: disable=g-import-not-at-top
  c = _shrink(pretrain_electra.get_config('tiny'), method='fgm')
  with pytest.raises(ConfigError, match='runs it 2 times'):
    adversarial.for_training(objectives.build_model(c), c)


# ---- through the entrypoints ------------------------------------------------------


_RUN = (
    '--config=configs/finetune_classifier.py:tiny',
    '--config.adversarial.method=fgm', '--config.adversarial.epsilon=0.5',
    '--config.model.emb_dim=32', '--config.model.num_heads=2',
    '--config.model.mlp_dim=64', '--config.model.num_encoder_layers=1',
    '--config.task.feature_lengths.inputs=32', '--config.train.batch_size=8',
    '--config.train.num_steps=4', '--config.train.log_every_steps=1',
    '--config.optimizer.warmup_steps=0', '--config.optimizer.decay_steps=100',
    '--config.eval.every_steps=2', '--config.eval.num_batches=1',
    '--config.checkpoint.every_steps=2', '--config.checkpoint.keep=3',
    '--config.checkpoint.async_save=False', '--config.mesh.data=1')


def _run(module, args, cache, timeout=300):
  env = subprocess_env(cache)
  # One CPU device (conftest's 8 fake ones only slow a 1-device run down).
  env['XLA_FLAGS'] = env.get('XLA_FLAGS', '').replace(
      '--xla_force_host_platform_device_count=8', '')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT,
                        env=env, timeout=timeout, capture_output=True,
                        text=True)


def _step_records(workdir):
  """{step: the last train record of that step} from metrics.jsonl."""
  return {r['step']: r for r in metrics_lib.read_metrics(workdir)
          if 'loss' in r}


@pytest.mark.slow
def test_fgm_trains_resumes_exactly_and_evaluates(tmp_path, jax_cache):  # pylint: disable=redefined-outer-name
  wd = str(tmp_path / 'fgm')
  r = _run('t5x_lite.train', _RUN + (f'--workdir={wd}',), jax_cache)
  assert r.returncode == 0, r.stderr[-3000:]
  first = _step_records(wd)
  for s in (1, 2, 3, 4):
    assert first[s]['adversarial_passes'] == 2.0
    np.testing.assert_allclose(first[s]['adversarial_delta_norm'], 0.5,
                               rtol=1e-5)
    assert first[s]['adversarial_loss'] > first[s]['loss']
  assert first[4]['step_time_s'] > 0  # the extra cost, measured
  ckpts = os.path.join(wd, 'checkpoints')
  params4 = params_checkpoints.restore_params(os.path.join(ckpts, '4'))

  # Resume from step 2: the same losses and bit-identical params at step 4.
  shutil.rmtree(os.path.join(ckpts, '4'))
  r = _run('t5x_lite.train', _RUN + (f'--workdir={wd}',), jax_cache)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'Resumed from' in r.stderr
  again = _step_records(wd)
  for s in (3, 4):
    assert again[s]['loss'] == first[s]['loss'], s
    assert again[s]['adversarial_loss'] == first[s]['adversarial_loss'], s
  resumed4 = params_checkpoints.restore_params(os.path.join(ckpts, '4'))
  for a, b in zip(jax.tree.leaves(params4), jax.tree.leaves(resumed4)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # Eval reads the saved config and runs the clean model.
  r = _run('t5x_lite.eval', (f'--workdir={wd}', '--config.mesh.data=1'),
           jax_cache)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(os.path.join(wd, 'eval_results.json')) as f:
    results = json.load(f)
  assert 'adversarial' not in json.dumps(results)
