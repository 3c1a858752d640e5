"""Transformer-XL segment recurrence (objectives/transformer_xl.py, memory.py).

  * the recurrence is real: with memory_length = L, the second segment's
    logits equal those of both segments run as one causal sequence (the
    second half), relative bias included, scanned and unrolled; a fresh
    memory gives the memory-less logits; the mask hides empty slots;
  * memory_length = 0 is today's decoder-only model: the same param tree and
    the same logits as models.arch_model's;
  * the streams: row r of step k + 1 continues row r of step k, hosts serve
    their own rows, skip_batches is the resume, the wrap-around resets;
  * the train step carries the memory in the state (what the network made of
    the batch), and refuses microbatches; memory without its objective and
    streams, or a resume at another batch size, fails in one line;
  * greedy generation with memory equals greedy decoding of the whole
    sequence without memory when it fits in memory + segment;
  * SIGKILL and restart with memory on continue bit-identically (slow).
"""
import os
import signal
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from e2e_runs import jax_cache  # pylint: disable=unused-import  (a fixture)
from e2e_runs import NEEDS_DATA
from e2e_runs import subprocess_env

from t5x_lite import config as config_lib
from t5x_lite import generation
from t5x_lite import memory as memory_lib
from t5x_lite import models
from t5x_lite import network
from t5x_lite import objectives
from t5x_lite import optimizers
from t5x_lite import partitioning
from t5x_lite import run_config
from t5x_lite import trainer
from t5x_lite.model_config import ConfigError, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
SEG = 8


def _cfg(memory_length=SEG, scan=True, **kw):
  # Few buckets and a short max distance: distances 0..2*SEG cross several
  # log-spaced buckets, so a wrong key position changes the bias.
  return ModelConfig(arch='decoder_only', vocab_size=96, emb_dim=32,
                     num_heads=2, head_dim=8, mlp_dim=48, num_decoder_layers=2,
                     scan_layers=scan, memory_length=memory_length,
                     relative_attention_num_buckets=8,
                     relative_attention_max_distance=12, **kw)


def _tokens(batch, length, seed=1):
  return jax.random.randint(jax.random.PRNGKey(seed), (batch, length), 2, 96)


def _txl_model(cfg):
  return objectives.get('transformer_xl').make_model(cfg, None)


# ---- the recurrence ---------------------------------------------------------------


@pytest.mark.parametrize('scan', [True, False])
def test_second_segment_equals_the_concatenated_sequence(scan):
  cfg = _cfg(scan=scan)
  module = network.build(cfg)
  toks = _tokens(3, 2 * SEG)
  params = partitioning.unbox(
      module.init(jax.random.PRNGKey(0), toks[:, :SEG])['params'])
  # The bias table is not degenerate: its buckets differ per head.
  table = params['decoder']['relpos_bias']['rel_embedding']
  assert float(jnp.std(table)) > 0.1
  full = module.apply({'params': params}, toks)  # one causal sequence
  empty = memory_lib.empty(2, 3, SEG, 32, jnp.float32)
  first, mem = module.apply({'params': params}, toks[:, :SEG], memory=empty)
  second, mem2 = module.apply({'params': params}, toks[:, SEG:], memory=mem)
  np.testing.assert_allclose(first, full[:, :SEG], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(second, full[:, SEG:], rtol=1e-6, atol=1e-6)
  # Without the memory the second segment is another computation.
  alone = module.apply({'params': params}, toks[:, SEG:])
  assert float(jnp.max(jnp.abs(alone - full[:, SEG:]))) > 1e-2
  np.testing.assert_array_equal(mem['memory_lengths'], [SEG] * 3)
  assert mem2['memory'].shape == (2, 3, SEG, 32)


def test_the_mask_hides_empty_slots_and_the_future():
  m = SEG // 2
  mask = memory_lib.attention_mask(jnp.array([0, 1, m]), SEG, m)
  assert mask.shape == (3, 1, SEG, m + SEG)
  assert not bool(jnp.any(mask[0, 0, :, :m]))  # empty memory: hidden
  np.testing.assert_array_equal(mask[1, 0, 0, :m], [0] * (m - 1) + [1])
  assert bool(jnp.all(mask[2, 0, :, :m]))  # filled: every query sees it
  # Causal over the extended range: query i sees segment keys 0..i.
  seg_part = mask[2, 0, :, m:]
  np.testing.assert_array_equal(seg_part, np.tril(np.ones((SEG, SEG), bool)))
  np.testing.assert_array_equal(
      memory_lib.next_lengths(jnp.array([0, 1, m]), SEG, m), [m, m, m])


def test_memory_zero_is_todays_decoder_only_model():
  base = models.arch_model(_cfg(memory_length=0))
  txl0 = _txl_model(_cfg(memory_length=0))
  txl = _txl_model(_cfg(memory_length=SEG))
  assert not memory_lib.carries_memory(txl0) and memory_lib.carries_memory(txl)
  batch = base.input_shapes({'inputs': SEG // 2, 'targets': SEG // 2}, 2)
  rng = jax.random.PRNGKey(0)
  p_base, p0, p = (m.init_params(rng, batch) for m in (base, txl0, txl))
  shapes = lambda t: jax.tree.map(lambda x: (x.shape, x.dtype), t)
  assert shapes(p0) == shapes(p_base) == shapes(p)  # no new params
  for a, b in zip(jax.tree.leaves(p0), jax.tree.leaves(p_base), strict=True):
    np.testing.assert_array_equal(a, b)
  toks = {'decoder_input_tokens': _tokens(2, SEG)}
  want = base.apply(p_base, toks)
  np.testing.assert_array_equal(txl0.apply(p0, toks), want)
  np.testing.assert_array_equal(txl.apply(p, toks), want)  # no memory given
  # A fresh memory changes nothing either (its slots are masked).
  got, _ = txl.apply_with_memory(p, toks, txl.init_memory(2))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# ---- the streams -------------------------------------------------------------------


def _stream_config(batch=4, segment=SEG):
  from t5x_lite.configs import default  # pylint: disable=g-import-not-at-top
  c = default.get_config()
  c.task.name = 'shakespeare_transformer_xl'
  c.task.feature_lengths.inputs = segment // 2
  c.task.feature_lengths.targets = segment - segment // 2
  c.train.batch_size = batch
  return c


@NEEDS_DATA
def test_streams_continue_rows_and_resume_by_skipping():
  from t5x_lite.tasks import streams  # pylint: disable=g-import-not-at-top
  c = _stream_config()
  tokens = streams.split_tokens(c.task.name, 'validation')
  eos = 1
  assert tokens.dtype == np.int32 and np.sum(tokens == eos) > 1000
  it = streams.get_stream_dataset(c, 'validation', batch_size=4)
  b = [next(it) for _ in range(3)]
  for k in range(2):  # row r of step k + 1 continues row r of step k
    np.testing.assert_array_equal(b[k + 1]['decoder_input_tokens'][:, 0],
                                  b[k]['decoder_target_tokens'][:, -1])
    np.testing.assert_array_equal(b[k]['decoder_input_tokens'][:, 1:],
                                  b[k]['decoder_target_tokens'][:, :-1])
  # Row r is the r-th quarter of the split, in order.
  s = len(tokens) // 4
  for r in range(4):
    np.testing.assert_array_equal(b[1]['decoder_input_tokens'][r],
                                  tokens[r * s + SEG:r * s + 2 * SEG])
  np.testing.assert_array_equal([x['memory_reset'][0] for x in b], [1, 0, 0])
  # Resume = skip; a host serves its own rows of the same streams.
  resumed = next(streams.get_stream_dataset(c, 'validation', batch_size=4,
                                            skip_batches=2))
  host1 = next(streams.get_stream_dataset(c, 'validation', batch_size=2,
                                          shard_id=1, num_shards=2,
                                          skip_batches=2))
  for key in b[2]:
    np.testing.assert_array_equal(resumed[key], b[2][key])
    np.testing.assert_array_equal(host1[key], b[2][key][2:])
  # One epoch, then the wrap-around restarts the streams with a reset.
  n = (s - 1) // SEG
  epoch = list(streams.get_stream_dataset(c, 'validation', batch_size=4,
                                          num_epochs=1))
  assert len(epoch) == n
  again = next(streams.get_stream_dataset(c, 'validation', batch_size=4,
                                          skip_batches=n))
  np.testing.assert_array_equal(again['decoder_input_tokens'],
                                b[0]['decoder_input_tokens'])
  assert again['memory_reset'][0] == 1


# ---- the train step -------------------------------------------------------------------


def _state_and_step(config, model):
  tx, schedule = optimizers.make_optimizer(
      run_config.OptimizerConfig.from_config(config))
  mesh = partitioning.make_mesh(config.mesh, jax.devices()[:1])
  rules = partitioning.logical_rules(config.mesh.rules)
  state, shardings = trainer.create_train_state(
      model, tx, mesh, rules, dict(config.task.feature_lengths),
      jax.random.PRNGKey(0), batch_size=int(config.train.batch_size))
  step = trainer.make_train_step(
      model, tx, run_config.StepConfig.from_config(config), mesh, rules,
      shardings, partitioning.batch_sharding(mesh, rules), schedule=schedule,
      donate=False)
  return state, step


def test_train_step_carries_the_memory_in_the_state():
  c = _stream_config(batch=2)
  c.model.arch = 'decoder_only'
  for k, v in dict(vocab_size=96, emb_dim=32, num_heads=2, head_dim=8,
                   mlp_dim=48, num_decoder_layers=2,
                   memory_length=SEG).items():
    c.model[k] = v
  c.objective.name = 'transformer_xl'
  model = objectives.build_model(c)
  state, step = _state_and_step(c, model)
  assert isinstance(state, trainer.MemoryTrainState)
  np.testing.assert_array_equal(state.memory['memory_lengths'], [0, 0])
  toks = _tokens(2, SEG + 1, seed=5)
  batch = {'decoder_input_tokens': toks[:, :-1],
           'decoder_target_tokens': toks[:, 1:],
           'decoder_loss_weights': jnp.ones((2, SEG), jnp.float32),
           'memory_reset': jnp.array([1, 1], jnp.int32)}
  params0 = state.params
  new, metrics = step(state, batch, jax.random.PRNGKey(1))
  # The memory the step left is what the network makes of this batch with
  # the params it started from.
  _, want = model.apply_with_memory(params0, batch, model.init_memory(2))
  np.testing.assert_allclose(new.memory['memory'], want['memory'], rtol=1e-6,
                             atol=1e-6)
  np.testing.assert_array_equal(new.memory['memory_lengths'], [SEG, SEG])
  # Its loss is the memory model's loss on the batch.
  loss, (sums, _) = model.memory_loss_terms(params0, batch,
                                            model.init_memory(2), None,
                                            enable_dropout=False)
  np.testing.assert_allclose(metrics['loss'], loss / sums['num_tokens'],
                             rtol=1e-5)
  # Microbatches would split a stream's memory: refused in one line.
  c.train.microbatches = 2
  with pytest.raises(ConfigError, match='train.microbatches=1'):
    config_lib.validate(c)


@NEEDS_DATA
def test_memory_needs_its_objective_and_streams_and_the_same_batch():
  from t5x_lite import checkpoints  # pylint: disable=g-import-not-at-top
  from t5x_lite import train_setup  # pylint: disable=g-import-not-at-top
  from t5x_lite.configs import pretrain_lm  # pylint: disable=g-import-not-at-top
  c = pretrain_lm.get_config('causal')
  c.model.memory_length = 16
  train_setup.check_task(c, splits=())
  with pytest.raises(ConfigError, match='does not carry a memory'):
    train_setup.check_memory(c)
  # A stream checkpoint resumes only with its own streams (batch size).
  c = _stream_config(batch=4)
  saved = checkpoints.Restored(step=4, state=None, config={},
                               data={'per_host_batch_size': 4})
  train_setup.check_stream_geometry(c, saved, 4)
  with pytest.raises(ConfigError, match='train.batch_size=4'):
    train_setup.check_stream_geometry(c, saved, 8)


# ---- generation ---------------------------------------------------------------------


def test_greedy_generation_with_memory_equals_the_whole_sequence():
  model = _txl_model(_cfg())
  module = model.module
  prompt = _tokens(2, SEG + 3, seed=7)  # a full segment into the memory
  params = partitioning.unbox(
      module.init(jax.random.PRNGKey(0), prompt[:, :SEG])['params'])
  num = SEG - 3  # prompt + continuation = 2 * SEG = memory + segment
  got = generation.generate_with_memory(model, params, prompt, num, SEG)
  # Greedy over the whole sequence without memory: one buffer of 2 * SEG
  # (trailing zeros are later positions, unseen by the causal mask).
  whole = jax.jit(lambda p, t: module.apply({'params': p}, t))
  n = prompt.shape[1]
  buf = jnp.zeros((2, 2 * SEG), jnp.int32).at[:, :n].set(prompt)
  for i in range(num):
    nxt = jnp.argmax(whole(params, buf)[:, n + i - 1], axis=-1)
    buf = buf.at[:, n + i].set(nxt.astype(jnp.int32))
  np.testing.assert_array_equal(got, buf[:, n:n + num])


# ---- exact resume with memory on (SIGKILL) ---------------------------------------------

RESUME_STEPS = 8
OVERRIDES = (
    'model.emb_dim=32', 'model.num_heads=2', 'model.head_dim=16',
    'model.mlp_dim=64', 'model.num_decoder_layers=1',
    f'model.memory_length={SEG}', f'task.feature_lengths.inputs={SEG // 2}',
    f'task.feature_lengths.targets={SEG // 2}', 'task.train_split=validation',
    'train.batch_size=8', f'train.num_steps={RESUME_STEPS}',
    'train.log_every_steps=1', 'optimizer.warmup_steps=2',
    'eval.every_steps=4', 'eval.num_batches=2', 'checkpoint.every_steps=4',
    'checkpoint.keep=5',
)

_KILL_AT = textwrap.dedent('''
    import functools, os, signal, sys, time
    step_at, wait_for = sys.argv.pop(1), sys.argv.pop(1)
    from t5x_lite import loop, train
    def hook(step):
      if step != int(step_at):
        return
      deadline = time.time() + 120
      while not os.path.exists(os.path.join(wait_for, 'commit_success.txt')):
        assert time.time() < deadline, 'checkpoint never committed'
        time.sleep(0.05)
      os.kill(os.getpid(), signal.SIGKILL)
    loop.train_and_evaluate = functools.partial(loop.train_and_evaluate,
                                                hooks=[hook])
    train.run_main()
''')


def _resume_config():
  """configs/pretrain_txl.py:tiny with OVERRIDES, as the flags give it."""
  from t5x_lite.configs import pretrain_txl  # pylint: disable=g-import-not-at-top
  c = pretrain_txl.get_config('tiny')
  for item in OVERRIDES:
    key, value = item.split('=', 1)
    *groups, leaf = key.split('.')
    node = c
    for g in groups:
      node = node[g]
    node[leaf] = type(node[leaf])(value)
  return c


def _train_args(workdir):
  return (['-m', 't5x_lite.train', '--config=configs/pretrain_txl.py:tiny',
           f'--workdir={workdir}'] + [f'--config.{o}' for o in OVERRIDES])


def _run(args, cache):
  return subprocess.run([PY] + args, cwd=ROOT, env=subprocess_env(cache),
                        timeout=300, capture_output=True, text=True)


def _losses(workdir):
  from t5x_lite import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  return {r['step']: r['loss'] for r in metrics_lib.read_metrics(workdir)
          if 'loss' in r}


def _saved_state(workdir, step):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')
  return ocp.StandardCheckpointer().restore(path)


@pytest.mark.slow
@NEEDS_DATA
def test_sigkill_and_restart_with_memory_is_exact(tmp_path, jax_cache):
  from t5x_lite import loop  # pylint: disable=g-import-not-at-top
  ref, killed = str(tmp_path / 'ref'), str(tmp_path / 'killed')
  assert loop.train_and_evaluate(_resume_config(), ref)['step'] == RESUME_STEPS
  first = _run(['-c', _KILL_AT, '6',
                os.path.join(killed, 'checkpoints', '4')] +
               _train_args(killed)[2:], jax_cache)
  assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
  killed_at = max(_losses(killed))
  assert killed_at >= 5
  again = loop.train_and_evaluate(_resume_config(), killed)  # from step 4
  assert again['step'] == RESUME_STEPS
  # It resumed (not restarted): the killed run's steps after 4 were moved
  # aside as abandoned records.
  from t5x_lite import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  abandoned = {r['step'] for r in metrics_lib.read_metrics(
      os.path.join(killed, metrics_lib.ABANDONED_FILE)) if 'loss' in r}
  assert sorted(abandoned) == list(range(5, killed_at + 1))
  assert _losses(killed) == _losses(ref)  # every step, exactly
  a, b = _saved_state(ref, RESUME_STEPS), _saved_state(killed, RESUME_STEPS)
  assert set(a) >= {'params', 'opt_state', 'memory'}
  np.testing.assert_array_equal(a['memory']['memory_lengths'], [SEG] * 8)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The memory is live: the checkpointed one is not zeros.
  assert float(np.abs(a['memory']['memory']).max()) > 0.1
