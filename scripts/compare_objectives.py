r"""Pretraining objectives at one FLOPs budget, then the same sentiment fine-tuning.

    python scripts/compare_objectives.py            # ~20 min on a 2-core CPU
    python scripts/compare_objectives.py --seeds=0,1,2 --budget_steps=800 \
        --finetune_steps=600 --out=runs/compare_objectives.json

What it measures (tiny dims: emb 64, 4 heads, MLP 128, 2 layers per stack;
the corpus vocabulary, 4224 logits):

  1. Pretraining on the shipped Shakespeare corpus with each objective:
       bert     encoder_only, shakespeare_mlm        (rows of 64 tokens)
       electra  encoder_only + generator (1/4 width), shakespeare_electra (64)
       t5       encoder_decoder, shakespeare_span_corruption (64 -> 16)
       causal   decoder_only, shakespeare_causal_lm  (64)
     The budget is the training FLOPs of --budget_steps BERT steps of
     --batch rows (objectives.flops_per_step, ELECTRA's generator included);
     every objective gets round(budget / its FLOPs per step) steps, so equal
     compute, not equal steps. AdamW, linear warmup (10%) and decay, same
     peak learning rate for all. Validation loss before and after is kept.
  2. The same fine-tuning of every pretrained model and of a from-scratch
     model of each architecture, on the sentiment data (rotten/fresh movie
     snippets): same steps, batch, optimizer, learning rate and dropout.
     encoder_only -> pooled classifier (sentiment_classification);
     encoder_decoder -> text-to-text (`sentiment`); decoder_only ->
     text-to-text with causal attention throughout, as GPT fine-tunes.
     Held-out accuracy on the whole `test` split (1539 snippets): the
     classifier's argmax, or for text-to-text the more likely of the two
     label tokens ('rotten', 'fresh') at the first target position.
  3. Everything over --seeds (pretraining and fine-tuning seed alike);
     mean ± sample std over seeds, a markdown table on stdout and the full
     record (per-seed numbers, steps, FLOPs, timings) as JSON in --out.

The ELECTRA paper reports replaced-token detection to be more compute
efficient than MLM; this script reports what it measures at this (very
small) scale, whichever way it comes out.
"""
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite.configs import default
from t5x_lite.configs import models as sizes
from t5x_lite import config as config_lib
from t5x_lite import models
from t5x_lite import objectives
from t5x_lite import optimizers
from t5x_lite import partitioning
from t5x_lite import run_config
from t5x_lite import trainer

_SEEDS = flags.DEFINE_string('seeds', '0,1', 'Comma-separated seeds.')
_BUDGET_STEPS = flags.DEFINE_integer(
    'budget_steps', 300, 'Pretraining budget, in steps of BERT at --batch.')
_FINETUNE_STEPS = flags.DEFINE_integer('finetune_steps', 200,
                                       'Fine-tuning steps (every model).')
_BATCH = flags.DEFINE_integer('batch', 16, 'Pretraining batch (rows).')
_FT_BATCH = flags.DEFINE_integer('finetune_batch', 32, 'Fine-tuning batch.')
_LENGTH = flags.DEFINE_integer('length', 64, 'Pretraining row length.')
_PRETRAIN_LR = flags.DEFINE_float('pretrain_lr', 2e-3, 'Peak pretraining LR.')
_FINETUNE_LR = flags.DEFINE_float('finetune_lr', 1e-3, 'Peak fine-tuning LR.')
_EVAL_BATCHES = flags.DEFINE_integer(
    'pretrain_eval_batches', 4, 'Validation batches for pretraining loss.')
_OBJECTIVES = flags.DEFINE_string(
    'objectives', 'bert,electra,t5,causal', 'Pretraining objectives to run.')
_OUT = flags.DEFINE_string('out', 'runs/compare_objectives.json',
                           'JSON results file.')

LABELS = ('rotten', 'fresh')  # class 0, 1 (tasks.builtin.SENTIMENT_LABELS)
TEST_SPLIT = 'test'
TEST_BATCH = 57  # 1539 = 27 x 57: every test example, no remainder dropped
# objective -> (arch, size row, pretraining task)
PRETRAIN = {
    'bert': ('encoder_only', 'encoder_tiny', 'shakespeare_mlm'),
    'electra': ('encoder_only', 'encoder_tiny', 'shakespeare_electra'),
    't5': ('encoder_decoder', 'tiny', 'shakespeare_span_corruption'),
    'causal': ('decoder_only', 'decoder_tiny', 'shakespeare_causal_lm'),
}
ROW_NAMES = {'bert': 'BERT MLM', 'electra': 'ELECTRA (RTD)',
             't5': 'T5 span corruption', 'causal': 'causal LM'}
SCRATCH = {'encoder_only': 'scratch (encoder classifier)',
           'encoder_decoder': 'scratch (T5 text-to-text)',
           'decoder_only': 'scratch (decoder text-to-text)'}


# ---- configs -----------------------------------------------------------------------


def _base(size_row, seed):
  c = default.get_config()
  sizes.apply_size(c, size_row)
  c.model.vocab_size = 4224  # the corpus vocabulary (4100), padded to 128
  c.train.seed = seed
  c.mesh.data = 1  # one device: the tiny model gains nothing from sharding
  c.optimizer.name = 'adamw'
  c.optimizer.schedule = 'linear'
  c.optimizer.weight_decay = 0.01
  c.optimizer.grad_clip_norm = 1.0
  return c


def pretrain_config(objective, seed, num_steps=None):
  arch, row, task = PRETRAIN[objective]
  c = _base(row, seed)
  c.task.name = task
  n = _LENGTH.value
  if objective == 't5':
    # Span corruption of 64 input tokens needs 16 target tokens.
    c.task.feature_lengths = dict(inputs=n, targets=n // 4)
  elif objective == 'causal':
    c.task.feature_lengths = dict(inputs=n // 2, targets=n - n // 2)
  else:
    c.task.feature_lengths = dict(inputs=n, targets=n)
  if objective == 'electra':
    c.objective.name = 'electra'
  c.train.batch_size = _BATCH.value
  c.train.num_steps = num_steps or _BUDGET_STEPS.value
  c.optimizer.learning_rate = _PRETRAIN_LR.value
  c.optimizer.warmup_steps = max(1, c.train.num_steps // 10)
  assert c.model.arch == arch
  return c


def finetune_config(arch, seed):
  row = {'encoder_only': 'encoder_tiny', 'encoder_decoder': 'tiny',
         'decoder_only': 'decoder_tiny'}[arch]
  c = _base(row, seed)
  if arch == 'encoder_only':
    c.objective.name = 'classification'
    c.task.name = 'sentiment_classification'
  else:
    c.task.name = 'sentiment'
  c.task.feature_lengths = dict(inputs=64, targets=4)
  c.task.pack = False  # one snippet per row, as evaluated
  c.model.dropout_rate = 0.1
  c.train.batch_size = _FT_BATCH.value
  c.train.num_steps = _FINETUNE_STEPS.value
  c.optimizer.learning_rate = _FINETUNE_LR.value
  c.optimizer.warmup_steps = max(1, c.train.num_steps // 10)
  return c


# ---- a lean train loop (no checkpoints: params stay in memory) -----------------------


class Runner:
  """Model, optimizer and jitted steps for one config shape (reused across
  seeds: one compilation per objective)."""

  def __init__(self, config):
    config_lib.validate(config, num_devices=1)
    self.config = config
    self.model = objectives.build_model(config)
    self.tx, schedule = optimizers.make_optimizer(
        run_config.OptimizerConfig.from_config(config))
    self.mesh = partitioning.make_mesh(config.mesh, jax.devices()[:1])
    rules = partitioning.logical_rules(config.mesh.rules)
    self.batch_sharding = partitioning.batch_sharding(self.mesh, rules)
    _, self.shardings = trainer.abstract_train_state(
        self.model, self.tx, self.mesh, rules,
        dict(config.task.feature_lengths))
    self.train_step = trainer.make_train_step(
        self.model, self.tx, run_config.StepConfig.from_config(config),
        self.mesh, rules, self.shardings, self.batch_sharding,
        schedule=schedule)
    self.eval_step = trainer.make_eval_step(
        self.model, self.mesh, rules, self.shardings.params,
        self.batch_sharding)
    shapes = self.model.input_shapes(config.task.feature_lengths, 1)

    def init(rng):  # trainer.create_train_state's, jitted once per runner
      params = self.model.init_params(rng, shapes)
      return trainer.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=self.tx.init(params))

    self._init = jax.jit(init, out_shardings=self.shardings)
    self.accuracy_fn = None  # set by test_accuracy on first use
    self.params = {}  # seed -> pretrained params

  def init(self, seed, params=None):
    state = self._init(jax.random.PRNGKey(seed))
    if params is not None:
      _check_same_tree(state.params, params)
      params = jax.device_put(params, self.shardings.params)
      state = state.replace(params=params)
    return state

  def train(self, state, data, num_steps, seed, drop=()):
    rng = jax.random.PRNGKey(1000 + seed)
    losses = []
    for _ in range(num_steps):
      batch = {k: v for k, v in next(data).items() if k not in drop}
      state, m = self.train_step(
          state, partitioning.shard_batch(batch, self.batch_sharding), rng)
      losses.append(m['loss'])
    losses = [float(x) for x in jax.device_get(losses)]
    if not np.all(np.isfinite(losses)):
      raise FloatingPointError(f'non-finite training loss: {losses[-5:]}')
    return state, losses

  def evaluate(self, params, batches):
    sums = None
    for b in batches:
      s = self.eval_step(params, partitioning.shard_batch(
          b, self.batch_sharding))
      sums = s if sums is None else jax.tree.map(jnp.add, sums, s)
    return {k: float(v) for k, v in
            jax.device_get(models.finalize_metrics(sums)).items()}


def _check_same_tree(target, source):
  t = jax.tree_util.tree_structure(target)
  s = jax.tree_util.tree_structure(source)
  if t != s:
    raise ValueError(f'pretrained params do not fit the fine-tuning model:\n'
                     f'{s}\nvs\n{t}')
  for a, b in zip(jax.tree_util.tree_leaves(target),
                  jax.tree_util.tree_leaves(source)):
    if a.shape != b.shape:
      raise ValueError(f'param shape {b.shape} != {a.shape}')


def _take(it, n):
  return [next(it) for _ in range(n)]


# ---- held-out sentiment accuracy -----------------------------------------------------


def _label_ids():
  from t5x_lite import tasks
  vocab = tasks.get_vocabulary('sentiment')
  ids = [vocab.encode(label) for label in LABELS]
  if any(len(i) != 1 for i in ids):
    raise ValueError(f'labels {LABELS} are not single pieces: {ids}')
  return np.array([i[0] for i in ids], np.int32)


def make_accuracy_fn(runner, arch):
  """Jitted batch -> (correct, count) on the test split's features."""
  model = runner.model
  label_ids = jnp.asarray(_label_ids())  # [2]

  def fn(params, batch):
    if arch == 'encoder_only':
      logits = model.apply(params, batch, head='pooled')  # [b, 2]
      pred = jnp.argmax(logits, -1)
      gold = batch['label']
      valid = gold >= 0
    else:
      logits = model.apply(params, batch)  # [b, len, vocab]
      weights = batch['decoder_loss_weights']
      first = jnp.argmax(weights > 0, axis=1)  # first target position
      row = jnp.take_along_axis(logits, first[:, None, None], 1)[:, 0]
      pred = jnp.argmax(row[:, label_ids], -1)  # [b]: the likelier label
      tgt = jnp.take_along_axis(batch['decoder_target_tokens'],
                                first[:, None], 1)[:, 0]
      gold = jnp.argmax(tgt[:, None] == label_ids[None], -1)
      valid = jnp.any(tgt[:, None] == label_ids[None], -1)
    correct = jnp.sum((pred == gold) & valid)
    return correct, jnp.sum(valid), jnp.sum((gold == 1) & valid)

  return jax.jit(fn)


def test_accuracy(runner, arch, params, drop=()):
  from t5x_lite import tasks
  if runner.accuracy_fn is None:
    runner.accuracy_fn = make_accuracy_fn(runner, arch)
  acc_fn = runner.accuracy_fn
  it = tasks.get_dataset(runner.config, TEST_SPLIT, batch_size=TEST_BATCH,
                         shuffle=False, num_epochs=1)
  correct = total = fresh = 0
  for batch in it:
    batch = {k: v for k, v in batch.items() if k not in drop}
    c, n, f = acc_fn(params, batch)
    correct += int(c)
    total += int(n)
    fresh += int(f)
  # The majority-class accuracy: what always answering one label scores.
  majority = max(fresh, total - fresh) / max(total, 1)
  return correct / max(total, 1), total, majority


# ---- the experiment --------------------------------------------------------------------


def pretrain(objective, seeds, runners):
  from t5x_lite import tasks
  bert_flops = objectives.flops_per_step(pretrain_config('bert', 0))
  budget = bert_flops * _BUDGET_STEPS.value
  probe = pretrain_config(objective, 0)
  per_step = objectives.flops_per_step(probe)
  steps = max(1, int(round(budget / per_step)))
  cfg = pretrain_config(objective, 0, num_steps=steps)
  runners[objective] = runner = Runner(cfg)
  out = {'steps': steps, 'flops_per_step': per_step,
         'total_flops': per_step * steps, 'budget_flops': budget, 'seeds': {}}
  for seed in seeds:
    t0 = time.time()
    cfg_s = pretrain_config(objective, seed, num_steps=steps)
    data = tasks.get_dataset(cfg_s, 'train', batch_size=cfg.train.batch_size,
                             seed=seed)
    val = _take(tasks.get_dataset(cfg_s, 'validation',
                                  batch_size=cfg.train.batch_size, seed=0,
                                  shuffle=False), _EVAL_BATCHES.value)
    state = runner.init(seed)
    before = runner.evaluate(state.params, val)
    state, losses = runner.train(state, data, steps, seed)
    after = runner.evaluate(state.params, val)
    rec = {'val_before': before, 'val_after': after,
           'train_loss_first': losses[0], 'train_loss_last': losses[-1],
           'seconds': time.time() - t0}
    out['seeds'][seed] = rec
    runner.params[seed] = state.params
    logging.info('pretrain %s seed %d: %d steps, val loss %.3f -> %.3f '
                 '(%.0fs)', objective, seed, steps, before['loss'],
                 after['loss'], rec['seconds'])
    print(f'  pretrain {objective:8s} seed {seed}: {steps} steps, val loss '
          f'{before["loss"]:.3f} -> {after["loss"]:.3f}'
          + (f', disc acc {after["disc_accuracy"]:.3f} vs all-original '
             f'{after["disc_baseline_accuracy"]:.3f}, replaced '
             f'{after["replaced_rate"]:.3f}' if objective == 'electra' else '')
          + f'  ({rec["seconds"]:.0f}s)', flush=True)
  return out


def finetune(name, arch, seeds, init_params, ft_runners):
  from t5x_lite import tasks
  if arch not in ft_runners:
    ft_runners[arch] = Runner(finetune_config(arch, 0))
  runner = ft_runners[arch]
  # Decoder-only: causal attention throughout (GPT-style fine-tuning), the
  # attention the causal LM was pretrained with.
  drop = ('decoder_causal_attention',) if arch == 'decoder_only' else ()
  out = {'arch': arch, 'seeds': {}}
  for seed in seeds:
    t0 = time.time()
    cfg_s = finetune_config(arch, seed)
    data = tasks.get_dataset(cfg_s, 'train', batch_size=_FT_BATCH.value,
                             seed=seed)
    params = None if init_params is None else init_params(seed)
    state = runner.init(seed, params)
    state, losses = runner.train(state, data, _FINETUNE_STEPS.value, seed,
                                 drop=drop)
    acc, n, majority = test_accuracy(runner, arch, state.params, drop=drop)
    out['majority_class_accuracy'] = majority
    out['seeds'][seed] = {'test_accuracy': acc, 'test_examples': n,
                          'train_loss_first': losses[0],
                          'train_loss_last': float(np.mean(losses[-20:])),
                          'seconds': time.time() - t0}
    print(f'  finetune {name:32s} seed {seed}: test accuracy {acc:.4f} '
          f'({n} examples, {time.time() - t0:.0f}s)', flush=True)
  accs = [r['test_accuracy'] for r in out['seeds'].values()]
  out['mean'] = float(np.mean(accs))
  out['std'] = float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0
  return out


def _fmt_loss(rec):
  b = np.mean([r['val_before']['loss'] for r in rec['seeds'].values()])
  a = np.mean([r['val_after']['loss'] for r in rec['seeds'].values()])
  return f'{b:.2f} → {a:.2f}'


def table(results) -> str:
  pre = results['pretrain']
  lines = [
      '| model | arch | pretraining steps | pretraining GFLOPs | '
      'val loss (pretrain objective) first → last | sentiment test accuracy '
      '(mean ± std) | per seed |',
      '|---|---|---|---|---|---|---|']
  for name, rec in results['finetune'].items():
    obj = rec.get('objective')
    if obj:
      p = pre[obj]
      steps, gflops, loss = (str(p['steps']), f'{p["total_flops"] / 1e9:.0f}',
                             _fmt_loss(p))
    else:
      steps, gflops, loss = '0', '0', '—'
    per_seed = ', '.join(f'{r["test_accuracy"]:.3f}'
                         for r in rec['seeds'].values())
    lines.append(f'| {name} | {rec["arch"]} | {steps} | {gflops} | {loss} | '
                 f'{100 * rec["mean"]:.1f} ± {100 * rec["std"]:.1f} | '
                 f'{per_seed} |')
  return '\n'.join(lines)


def main(argv):
  del argv
  seeds = [int(s) for s in _SEEDS.value.split(',') if s.strip()]
  objectives = [o for o in _OBJECTIVES.value.split(',') if o]
  unknown = [o for o in objectives if o not in PRETRAIN]
  if unknown:
    raise app.UsageError(f'unknown objectives {unknown}; use {list(PRETRAIN)}')
  t_start = time.time()
  results = {'settings': {
      'seeds': seeds, 'budget_steps_of_bert': _BUDGET_STEPS.value,
      'pretrain_batch': _BATCH.value, 'length': _LENGTH.value,
      'pretrain_lr': _PRETRAIN_LR.value, 'finetune_steps':
      _FINETUNE_STEPS.value, 'finetune_batch': _FT_BATCH.value,
      'finetune_lr': _FINETUNE_LR.value, 'test_split': TEST_SPLIT,
      'backend': jax.default_backend()}, 'pretrain': {}, 'finetune': {}}

  print('## pretraining (equal FLOPs)', flush=True)
  runners = {}
  for obj in objectives:
    results['pretrain'][obj] = pretrain(obj, seeds, runners)
  results['settings']['budget_flops'] = next(
      iter(results['pretrain'].values()))['budget_flops'] if objectives else 0

  print('## fine-tuning on sentiment', flush=True)
  ft_runners = {}
  for arch in ('encoder_only', 'encoder_decoder', 'decoder_only'):
    if not any(PRETRAIN[o][0] == arch for o in objectives):
      continue
    results['finetune'][SCRATCH[arch]] = finetune(
        SCRATCH[arch], arch, seeds, None, ft_runners)
  for obj in objectives:
    arch = PRETRAIN[obj][0]
    params = runners[obj].params
    if obj == 'electra':
      init = lambda s, p=params: objectives.electra.discriminator_params(p[s])
    else:
      init = lambda s, p=params: p[s]
    rec = finetune(ROW_NAMES[obj], arch, seeds, init, ft_runners)
    rec['objective'] = obj
    results['finetune'][ROW_NAMES[obj]] = rec
    runners[obj].params = None  # free

  results['seconds'] = time.time() - t_start
  md = table(results)
  budget = results['settings']['budget_flops']
  header = (f'Pretraining budget: {budget / 1e9:.0f} GFLOPs per model '
            f'(= {_BUDGET_STEPS.value} BERT-tiny steps of {_BATCH.value} x '
            f'{_LENGTH.value} tokens); fine-tuning: {_FINETUNE_STEPS.value} '
            f'steps of {_FT_BATCH.value}; seeds {seeds}; test split '
            f'{TEST_SPLIT}; {results["seconds"] / 60:.1f} min total.')
  majority = [r.get('majority_class_accuracy') for r in
              results['finetune'].values()]
  if majority:
    results['majority_class_accuracy'] = majority[0]
    header += (f'\nAlways answering the majority label scores '
               f'{100 * majority[0]:.1f}% on the test split.')
  if 'electra' in results['pretrain']:
    e = results['pretrain']['electra']['seeds']
    mean = lambda k: np.mean([r['val_after'][k] for r in e.values()])
    header += (f'\nELECTRA validation: discriminator accuracy '
               f'{mean("disc_accuracy"):.3f} vs all-original baseline '
               f'{mean("disc_baseline_accuracy"):.3f}; replaced-token rate '
               f'{mean("replaced_rate"):.3f} of tokens '
               f'({mean("masked_replaced_rate"):.3f} of masked positions); '
               f'generator MLM accuracy {mean("accuracy"):.3f}.')
  print()
  print(header)
  print()
  print(md, flush=True)
  results['markdown'] = header + '\n\n' + md
  out = os.path.join(ROOT, _OUT.value) if not os.path.isabs(
      _OUT.value) else _OUT.value
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(results, f, indent=1, default=float)
  print(f'\nwrote {out}')


if __name__ == '__main__':
  app.run(main)
