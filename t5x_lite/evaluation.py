"""Evaluation: a checkpoint -> task metrics, teacher-forced loss, samples.

    results = evaluation.evaluate(config, workdir)             # eval.py
    metrics, n = evaluation.teacher_forced(eval_step, params, batches)

A stream task (Transformer-XL, tasks/streams.py) reports instead of step 1
the validation perplexity over its validation streams with the memory
carried from segment to segment and with it cleared at every segment, at the
same segment length (`StreamEval`: eval/ppl_with_memory, eval/ppl_no_memory;
the training loop's periodic eval uses it too).

`evaluate` restores the params (model_loading.load_model: the newest usable
step of workdir/checkpoints, or an explicit checkpoint: a step dir, a
checkpoints dir or an HF-imported params-only dir), then on
config.task.eval_split:

  1. the teacher-forced loss/accuracy over eval.num_batches batches
     (`teacher_forced`, which the training loop's eval/* numbers also use);
  2. `seqio.Evaluator` over config.task.name (a task or every task of a
     mixture) with the tasks' own metric fns (accuracy, BLEU, ROUGE, ...),
     fed by a predict_fn (generation.predict_batch with config.decoding) and a
     score_fn (model.score_batch). Tasks without metric fns (pretraining
     objectives such as span corruption) just have no metrics;
  3. a few decoded samples (input / target / prediction), printed and logged.

Results go to workdir/eval_results.json and TensorBoard (run "eval": event
files and a metrics.jsonl under workdir/eval/). seqio (hence TensorFlow) lives in
t5x_lite/tasks/evaluator.py, imported when an evaluation runs.
"""
import itertools
import json
import math
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import batches as batches_lib
from t5x_lite import memory as memory_lib
from t5x_lite import metrics as metrics_lib
from t5x_lite import model_loading
from t5x_lite import models
from t5x_lite import partitioning
from t5x_lite import trainer
from t5x_lite.predictor import Predictor

RESULTS_FILE = 'eval_results.json'
TENSORBOARD_SUBDIR = 'eval'
# A batch as `eval_step` takes it: placed on the mesh (Predictor.put), or
# host numpy for an unsharded step.
Batch = Dict[str, Any]


# ---- teacher-forced loss ----------------------------------------------------------


def teacher_forced(eval_step: Callable[[Any, Batch], Dict[str, jax.Array]],
                   params, batches: Iterable[Batch]
                   ) -> Tuple[Dict[str, float], int]:
  """({metric: value}, number of batches) of eval_step over `batches`.

  The one teacher-forced evaluation (the training loop's eval/* and
  `teacher_forced_metrics`): eval_step's sums (models.SUM_KEYS plus an
  objective's own) are added over every batch, then models.finalize_metrics
  turns them into per-token loss, z_loss, accuracy, num_tokens and the
  objective's ratios. ({}, 0) when `batches` is empty.
  """
  total, n = None, 0
  for batch in batches:
    sums = eval_step(params, batch)
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
    n += 1
  if total is None:
    return {}, 0
  m = jax.device_get(models.finalize_metrics(total))
  return {k: float(v) for k, v in m.items()}, n


def _ppl(loss: float) -> float:
  return math.exp(loss) if loss < 700 else float('inf')


def _float_weights(batch):
  return {k: (np.asarray(v, np.float32) if k.endswith('loss_weights') else v)
          for k, v in batch.items()}


class StreamEval:
  """Validation perplexity over a stream task's segments (host batches in
  stream order), with the memory and with it cleared at every segment.

    stream_eval = StreamEval.build(model, mesh, rules, param_shardings,
                                   batch_sharding, eval_step, batches,
                                   global_batch)
    stream_eval.evaluate(params) -> {loss, accuracy, ..., ppl_with_memory,
                                     ppl_no_memory, loss_no_memory, batches}

  loss/accuracy are the memory-carrying ones. A model without memory
  (model.memory_length=0) reports ppl_no_memory only.
  """

  def __init__(self, eval_step, memory_step, batches, batch_sharding,
               empty_memory):
    self.eval_step = eval_step
    self.memory_step = memory_step
    self.batches = batches
    self.batch_sharding = batch_sharding
    self.empty_memory = empty_memory

  @classmethod
  def build(cls, model, mesh, rules, params_shardings, batch_sharding,
            eval_step, batches, global_batch: int) -> 'StreamEval':
    memory_step = empty = None
    if memory_lib.carries_memory(model):
      shardings = trainer.memory_shardings(
          mesh, rules, model.abstract_memory(global_batch))
      memory_step = trainer.make_memory_eval_step(
          model, mesh, rules, params_shardings, batch_sharding, shardings)
      empty = jax.jit(lambda: model.init_memory(global_batch),
                      out_shardings=shardings)()
    return cls(eval_step, memory_step, batches, batch_sharding, empty)

  def evaluate(self, params) -> Dict[str, float]:
    placed = (partitioning.shard_batch(_float_weights(b), self.batch_sharding)
              for b in self.batches)
    if self.memory_step is None:
      m, n = teacher_forced(self.eval_step, params, placed)
      if not n:
        return {}
      return dict(m, ppl_no_memory=_ppl(m['loss']), batches=n)
    carried = cleared = None
    memory, n = self.empty_memory, 0
    add = lambda t, s: s if t is None else jax.tree.map(jnp.add, t, s)
    for batch in placed:
      sums, memory = self.memory_step(params, batch, memory)
      carried = add(carried, sums)
      sums, _ = self.memory_step(params, batch, self.empty_memory)
      cleared = add(cleared, sums)
      n += 1
    if not n:
      return {}
    with_m = jax.device_get(models.finalize_metrics(carried))
    without = jax.device_get(models.finalize_metrics(cleared))
    out = {k: float(v) for k, v in with_m.items()}
    out.update(loss_no_memory=float(without['loss']),
               accuracy_no_memory=float(without['accuracy']),
               ppl_with_memory=_ppl(out['loss']),
               ppl_no_memory=_ppl(float(without['loss'])), batches=n)
    return out


def stream_metrics(predictor: Predictor, config) -> Dict[str, float]:
  """StreamEval over eval.num_batches segments of task.eval_split's
  streams (-1: each segment once), eval batch size streams."""
  from t5x_lite.tasks import streams  # pylint: disable=g-import-not-at-top
  num_batches = int(config.eval.num_batches)
  if num_batches == 0:
    return {}
  size = batches_lib.eval_batch_size(config, predictor.num_shards)
  ds = streams.get_stream_dataset(config, config.task.eval_split,
                                  batch_size=size,
                                  num_epochs=1 if num_batches < 0 else None)
  ds = list(itertools.islice(ds, num_batches if num_batches > 0 else None))
  return StreamEval.build(
      predictor.model, predictor.mesh, predictor.rules,
      predictor.param_shardings, predictor.batch_sharding,
      predictor.eval_step(), ds, size).evaluate(predictor.params)


def teacher_forced_metrics(predictor: Predictor, config) -> Dict[str, float]:
  """eval/{loss,accuracy,z_loss,num_tokens} over eval.num_batches batches of
  task.eval_split (-1: the whole split), as the training loop computes them,
  plus the objective's own metrics (ELECTRA: disc_accuracy,
  disc_baseline_accuracy, replaced_rate, ...)."""
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  from t5x_lite.tasks import streams  # pylint: disable=g-import-not-at-top
  if streams.is_stream_task(config.task.name):
    return stream_metrics(predictor, config)
  num_batches = int(config.eval.num_batches)
  if num_batches == 0:
    return {}
  size = batches_lib.eval_batch_size(config, predictor.num_shards)
  ds = tasks.get_dataset(config, config.task.eval_split, batch_size=size,
                         shuffle=False, seed=int(config.train.seed),
                         num_epochs=1 if num_batches < 0 else None)
  ds = itertools.islice(ds, num_batches if num_batches > 0 else None)
  m, n = teacher_forced(predictor.eval_step(), predictor.params,
                        (predictor.put(batch) for batch in ds))
  if not n:
    logging.warning('No full batch of %d in split %r: no teacher-forced loss.',
                    size, config.task.eval_split)
    return {}
  return dict(m, batches=n)


# ---- decoded samples -----------------------------------------------------------------


def _prompt_and_target(model, batch, i):
  """(input ids, target ids) of row i of a feature-converted batch."""
  if model.ARCH == 'encoder_decoder':
    return batch['encoder_input_tokens'][i], batch['decoder_target_tokens'][i]
  targets = batch['decoder_target_tokens'][i]
  causal = batch.get('decoder_causal_attention')
  if causal is None:
    return np.zeros((0,), np.int32), targets
  prompt = causal[i][1:] > 0  # input position j + 1 holds target j
  prompt = np.concatenate([prompt, [False]])
  return targets[prompt], targets[~prompt]


def decode_samples(predictor: Predictor, config, num: int
                   ) -> List[Dict[str, str]]:
  """`num` examples of task.eval_split: input / target / prediction text."""
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  if num <= 0 or predictor.model.ARCH == 'encoder_only':
    return []
  vocab = tasks.get_vocabulary(config.task.name)
  ds = tasks.get_tf_dataset(config, config.task.eval_split, batch_size=num,
                            shuffle=False, num_epochs=1, pack=False)
  batch = next(ds.as_numpy_iterator(), None)
  if batch is None:
    logging.warning('Split %r has fewer than %d examples: no samples.',
                    config.task.eval_split, num)
    return []
  tokens, scores = predictor.predict(batches_lib.pad_rows(batch, num))
  eos = predictor.settings.eos_id
  out = []
  for i in range(num):
    prompt, target = _prompt_and_target(predictor.model, batch, i)
    out.append({
        'input': vocab.decode(batches_lib.trim_decode(prompt, eos)),
        'target': vocab.decode(batches_lib.trim_decode(target, eos)),
        'prediction': vocab.decode(batches_lib.trim_decode(tokens[i], eos)),
        'score': float(scores[i]),
    })
  return out


def format_samples(samples: List[Dict[str, str]]) -> str:
  lines = []
  for i, s in enumerate(samples):
    lines += [f'[{i}] input:      {s["input"]}',
              f'    target:     {s["target"]}',
              f'    prediction: {s["prediction"]}']
  return '\n'.join(lines)


# ---- seqio.Evaluator ---------------------------------------------------------------


def task_metrics(predictor: Predictor, config, step: int
                 ) -> Dict[str, Dict[str, Any]]:
  """{task: {metric: value}} from seqio.Evaluator with the tasks' metric fns
  (t5x_lite/tasks/evaluator.py). Empty for pretraining tasks and for
  encoder-only models (they do not decode)."""
  from t5x_lite.tasks import evaluator  # pylint: disable=g-import-not-at-top
  if predictor.model.ARCH == 'encoder_only':
    return {}
  return evaluator.evaluate(
      config, step, batches_lib.eval_batch_size(config, predictor.num_shards),
      predict=lambda feats: predictor.predict(feats)[0],
      score=predictor.score)


# ---- the whole evaluation ----------------------------------------------------------


def _write_tensorboard(workdir: str, step: int, results: Dict[str, Any]):
  """Scalars and the samples to workdir/eval (a TensorBoard run)."""
  # clu's SummaryWriter when tensorboard is installed, else metrics.py's own
  # event writer; workdir/eval/ also gets a metrics.jsonl of these scalars.
  writer = metrics_lib.create_writer(os.path.join(workdir, TENSORBOARD_SUBDIR))
  scalars = {f'eval/{k}': v for k, v in results['teacher_forced'].items()}
  for task, metrics in results['metrics'].items():
    for k, v in metrics.items():
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        scalars[f'{task}/{k}'] = v
  if scalars:
    writer.write_scalars(step, scalars)
  if results['samples']:
    writer.write_texts(step, {'samples': '\n\n'.join(
        f'**input:** {s["input"]}  \n**target:** {s["target"]}  \n'
        f'**prediction:** {s["prediction"]}' for s in results['samples'])})
  writer.flush()
  writer.close()


def evaluate(config, workdir: str, checkpoint: Optional[str] = None, *,
             write: bool = True, print_fn=print) -> Dict[str, Any]:
  """Evaluates a checkpoint on config.task.eval_split; see the module doc.

  Args:
    config: the run's ConfigDict (task, decoding, eval groups).
    workdir: results go here; its checkpoints dir is the default checkpoint.
    checkpoint: a step dir, checkpoints dir or params-only dir instead.
    write: write eval_results.json and TensorBoard events.
    print_fn: where the summary and the samples go (None: nowhere).
  Returns:
    {'step', 'checkpoint', 'task', 'split', 'teacher_forced': {...},
     'metrics': {task: {...}}, 'samples': [{input, target, prediction}]}.
  """
  workdir = os.path.abspath(workdir)
  path = checkpoint or model_loading.default_checkpoint(workdir)
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  # Missing data files: one line now, not a NotFoundError after the restore.
  tasks.check_data(config.task.name, [config.task.eval_split])
  predictor, info = Predictor.from_checkpoint(config, path)
  step = info['step']
  logging.info('Evaluating %s (step %d) on %s/%s.', info['checkpoint'], step,
               config.task.name, config.task.eval_split)
  results = {
      'step': step,
      'checkpoint': info['checkpoint'],
      'task': config.task.name,
      'split': config.task.eval_split,
      'decoding': dict(config.decoding),
      'teacher_forced': teacher_forced_metrics(predictor, config),
      'metrics': task_metrics(predictor, config, step),
      'samples': decode_samples(predictor, config,
                                int(config.eval.num_decode_examples)),
  }
  if write and jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, RESULTS_FILE), 'w') as f:
      json.dump(results, f, indent=1)
    _write_tensorboard(workdir, step, results)
  if print_fn is not None:
    print_fn(summary(results))
  return results


def summary(results: Dict[str, Any]) -> str:
  """A few readable lines: loss, each task's metrics, the samples."""
  lines = [f'eval of {results["checkpoint"]} (step {results["step"]}) on '
           f'{results["task"]}/{results["split"]}']
  tf = results['teacher_forced']
  if tf:
    lines.append(f'  teacher-forced loss {tf["loss"]:.4f}  token accuracy '
                 f'{tf["accuracy"]:.4f}  ({tf["batches"]} batches)')
    extra = sorted(set(tf) - {'loss', 'accuracy', 'z_loss', 'num_tokens',
                              'batches'})
    if extra:  # the objective's own metrics
      lines.append('  ' + '  '.join(f'{k} {tf[k]:.4f}' for k in extra))
  for task, metrics in results['metrics'].items():
    shown = ', '.join(f'{k} {v:.4f}' if isinstance(v, float) else f'{k} {v}'
                      for k, v in metrics.items())
    lines.append(f'  {task}: {shown}')
  if not results['metrics']:
    lines.append('  (no task metrics: the task defines no metric fns)')
  if results['samples']:
    lines.append(format_samples(results['samples']))
  return '\n'.join(lines)
