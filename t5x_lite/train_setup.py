"""Set-up of a training run: `setup(config, workdir) -> RunSetup`.

Everything loop.py's steps need, built once and in this order:

  1. the config is validated and the task looked up (before anything
     compiles);
  2. model, optimizer, mesh, batch sharding and this process's input shard
     (train and eval batch sizes);
  3. the state: resumed from the newest usable checkpoint in
     workdir/checkpoints (its data position too), or initialised into its
     shardings, optionally with the params of checkpoint.restore_from;
  4. the data iterators: the train split skips exactly the rows already
     consumed (so a resumed run sees the rows an uninterrupted one would,
     also after a change of train.batch_size when the rows consumed divide
     into whole batches of the new size; otherwise the resume is refused),
     the eval split is read the same way at every eval;
  5. the jitted train and eval steps (compiled at their first call);
     a stream task (tasks/streams.py: Transformer-XL) reads contiguous
     streams instead of seqio rows, its position is the step count (a
     resume at another batch size is refused: the streams would differ),
     and a model that carries memory gets the memory eval step too;
  6. workdir/config.json, last: a config that a resume rejects (another
     model, a batch size the position cannot convert to) leaves the one of
     the run it tried to resume in place.

`setup` is `prepare` (1, and the workdir; no JAX work) then `build` (2-6):
loop.py takes the workdir lock between the two.
"""
import dataclasses
import json
import os
from typing import Any, Callable, Dict, Iterator, List, Optional

from absl import logging
import jax
import numpy as np

from t5x_lite import adversarial
from t5x_lite import checkpoint_inspection
from t5x_lite import checkpoints
from t5x_lite import config as config_lib
from t5x_lite import distributed
from t5x_lite import objectives
from t5x_lite import optimizers
from t5x_lite import params_checkpoints
from t5x_lite import partitioning
from t5x_lite import run_config
from t5x_lite import trainer
from t5x_lite.config import ConfigError

CONFIG_FILE = 'config.json'


@dataclasses.dataclass
class DataPosition:
  """Where this process's input stands when the run starts (saved with every
  checkpoint as its 'data' item; loop.Checkpointing writes it)."""
  seed: int  # the train split's shuffle seed
  batches_consumed: int  # by this process, before this run's first step
  skipped_steps: int  # non-finite updates dropped so far (earlier runs too)


@dataclasses.dataclass
class RunSetup:
  """What `setup` builds: the pieces loop.py's steps run on."""
  config: Any
  workdir: str  # absolute
  model: Any  # models.BaseModel (objectives.build_model)
  mesh: jax.sharding.Mesh
  batch_sharding: jax.sharding.NamedSharding
  host: distributed.HostShard  # this process's rows of each train batch
  ckpt: checkpoints.Checkpointer
  state: Optional[trainer.TrainState]  # the loop takes it (steps donate it)
  start_step: int
  dropout_rng: jax.Array
  train_step: Callable  # (state, batch, rng) -> (state, metrics)
  eval_step: Callable  # (params, batch) -> sums
  train_data: Iterator[Dict[str, np.ndarray]]  # host batches, from position
  eval_data: 'EvalData'
  position: DataPosition
  resumed: bool = False  # from a checkpoint of this workdir
  # Stream tasks: evaluation.StreamEval (perplexity with and without the
  # memory); None: the teacher-forced eval of eval_step over eval_data.
  stream_eval: Optional[Any] = None


# ---- checks and records ------------------------------------------------------------


def check_task(config, splits=None):
  """Unknown task names fail here, before anything compiles; then the task's
  objective fills config.objective.name ('' = the task's) or must equal it,
  and the objective's own checks run on it. Last the task's data: the files
  of each of `splits` (default: the train split, and the eval split when the
  run evaluates; () skips it) and its vocabulary, which must fit
  model.vocab_size (tasks.check_data / check_vocabulary: one line each)."""
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  names = tasks.registered_names()
  if config.task.name not in names:
    raise ConfigError(
        f'task.name={config.task.name!r} is not a registered task or '
        f'mixture.{config_lib._closest(config.task.name, names)} Known: '  # pylint: disable=protected-access
        f'{", ".join(sorted(names))}.')
  before = config.objective.name
  tasks.resolve_objective(config)
  if config.objective.name != before:
    config_lib.validate(config)
  if splits is None:
    splits = [config.task.train_split] + (
        [config.task.eval_split] if int(config.eval.num_batches) else [])
  tasks.check_data(config.task.name, splits)
  tasks.check_vocabulary(config.task.name, int(config.model.vocab_size))


def check_memory(config):
  """model.memory_length > 0 needs a model that carries the memory (its
  objective's) and a stream task that feeds it continuing rows."""
  if int(config.model.get('memory_length', 0) or 0) <= 0:
    return
  from t5x_lite import memory as memory_lib  # pylint: disable=g-import-not-at-top
  from t5x_lite.tasks import streams  # pylint: disable=g-import-not-at-top
  fix = ('train a stream task (configs/pretrain_txl.py) or set '
         'model.memory_length=0')
  if not memory_lib.carries_memory(objectives.build_model(config)):
    raise ConfigError(
        f'model.memory_length={config.model.memory_length} but objective '
        f'{config.objective.name!r} of task {config.task.name} does not '
        f'carry a memory: {fix}.')
  if not streams.is_stream_task(config.task.name):
    raise ConfigError(
        f'model.memory_length={config.model.memory_length} needs batches '
        f'that continue each row, but task {config.task.name} is not a '
        f'stream task: {fix}.')


def make_workdir(workdir: str):
  """Creates `workdir` (process 0) before anything is built, or raises
  ConfigError: one line with the path and the reason."""
  if jax.process_index() != 0:
    return
  try:
    os.makedirs(workdir, exist_ok=True)
    if not os.access(workdir, os.W_OK | os.X_OK):
      raise PermissionError(13, 'not writable')
  except OSError as e:
    raise ConfigError(
        f'--workdir {workdir} cannot be used: {e.strerror or e}; pick a '
        'directory you can create and write to.') from e


def write_config(config, workdir: str):
  """workdir/config.json (process 0; atomic)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True) + '\n')
  os.replace(tmp, path)


def config_dict(config) -> Dict[str, Any]:
  """The config as plain JSON values (what checkpoints save as 'config')."""
  return json.loads(config.to_json_best_effort())


def warn_on_config_drift(saved: Dict[str, Any], config):
  """Changes that make a resumed data position mean something else
  (train.batch_size is not one: data_position converts it exactly)."""
  now = config_dict(config)
  for group, key in (('task', 'name'), ('task', 'feature_lengths'),
                     ('task', 'pack'), ('train', 'seed')):
    before = saved.get(group, {}).get(key)
    if before is not None and before != now[group][key]:
      logging.warning(
          'Resuming with %s.%s=%r, but the checkpoint was trained with %r: the '
          'data position is restored as a row count of another stream and '
          'will not reproduce the uninterrupted run.', group, key,
          now[group][key], before)


# ---- eval data --------------------------------------------------------------------


class EvalData:
  """Teacher-forced eval batches: the same ones at every eval.

  With eval.num_batches > 0 the first evaluation keeps them in host memory;
  -1 reads the whole split each time (one epoch, every process the same
  number of batches).
  """

  def __init__(self, config, host: distributed.HostShard):
    self.config = config
    self.host = host
    self.num_batches = int(config.eval.num_batches)
    self._cache: Optional[List[Dict[str, np.ndarray]]] = None

  def _dataset(self, num_epochs):
    from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
    from t5x_lite.tasks import streams  # pylint: disable=g-import-not-at-top
    if streams.is_stream_task(self.config.task.name):
      return streams.get_stream_dataset(
          self.config, self.config.task.eval_split,
          batch_size=self.host.per_host_batch_size, shard_id=self.host.index,
          num_shards=self.host.num_shards, num_epochs=num_epochs)
    return tasks.get_dataset(
        self.config, self.config.task.eval_split,
        batch_size=self.host.per_host_batch_size, shard_id=self.host.index,
        num_shards=self.host.num_shards, seed=self.config.train.seed,
        shuffle=False, num_epochs=num_epochs)

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    if self.num_batches == 0:
      return iter(())
    if self.num_batches > 0:
      if self._cache is None:
        it = self._dataset(num_epochs=None)  # repeats if the split is small
        self._cache = [next(it) for _ in range(self.num_batches)]
      return iter(self._cache)
    return self._whole_split()

  def _whole_split(self):
    it = self._dataset(num_epochs=1)
    while True:
      batch = next(it, None)
      if not _all_processes_agree(batch is not None):
        return
      yield batch


def _all_processes_agree(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


# ---- the pieces of setup ------------------------------------------------------------


def _mesh_and_hosts(config):
  """(mesh, batch sharding, train host shard, eval host shard)."""
  mesh = partitioning.make_mesh(config.mesh)
  rules = partitioning.logical_rules(config.mesh.rules)
  batch_sharding = partitioning.batch_sharding(mesh, rules)
  host = distributed.host_shard(config.train.batch_size, batch_sharding)
  eval_batch = int(config.eval.batch_size) or int(config.train.batch_size)
  shards = partitioning.num_batch_shards(mesh, rules)
  if eval_batch % shards:
    raise ConfigError(
        f'eval.batch_size={eval_batch} is not divisible by the {shards} batch '
        'shards (mesh data*fsdp); change eval.batch_size.')
  eval_host = distributed.host_shard(eval_batch, batch_sharding)
  return mesh, batch_sharding, host, eval_host


def _restore_or_init(config, model, tx, mesh, rules, ckpt, abstract_state,
                     init_rng) -> tuple:
  """(state, checkpoints.Restored or None): resume, or init (optionally with
  the params of checkpoint.restore_from and a fresh optimizer state)."""
  restored = ckpt.restore(abstract_state)
  if restored is not None:
    warn_on_config_drift(restored.config, config)
    logging.info('Resumed from %s/%d.', ckpt.directory, restored.step)
    return restored.state, restored
  state, _ = trainer.create_train_state(
      model, tx, mesh, rules, dict(config.task.feature_lengths), init_rng,
      batch_size=int(config.train.batch_size))
  if config.checkpoint.restore_from:
    fresh = fresh_params(config)
    params = params_checkpoints.restore_params(config.checkpoint.restore_from,
                                        abstract_state.params, fresh=fresh)
    if fresh:
      params = _with_fresh(state.params, params, fresh)
      logging.info('Fresh params (initialised, not restored): %s.', ', '.join(
          params_checkpoints.fresh_paths(state.params, fresh)))
    state = state.replace(params=params)
    logging.info('Initialised params from %s (fresh optimizer state).',
                 config.checkpoint.restore_from)
  return state, None


def fresh_params(config) -> tuple:
  """The param path prefixes fine-tuning initialises instead of restoring:
  the objective's new heads (Objective.fresh_params) and
  checkpoint.fresh_params (comma-separated)."""
  obj = objectives.resolve(config)
  own = tuple(obj.fresh_params) if obj is not None else ()
  extra = str(config.checkpoint.get('fresh_params', '') or '')
  return own + tuple(p.strip().strip('/') for p in extra.split(',')
                     if p.strip())


def _with_fresh(init, restored, fresh, path=''):
  """`init` with every param outside the `fresh` prefixes from `restored`
  (restore_params leaves the fresh ones out)."""
  if not hasattr(init, 'items'):
    return restored
  out = {}
  for key, value in init.items():
    sub = f'{path}/{key}' if path else str(key)
    if any(sub == p or sub.startswith(p + '/') for p in fresh):
      out[key] = value
    else:
      out[key] = _with_fresh(value, restored[key], fresh, sub)
  return type(init)(out) if not isinstance(init, dict) else out


def _saved_rows_per_batch(restored: checkpoints.Restored) -> Optional[int]:
  """The per-host batch size the checkpoint's position counts in (its data
  item; older checkpoints: its config's train.batch_size / processes)."""
  data = restored.data
  if data.get('per_host_batch_size'):
    return int(data['per_host_batch_size'])
  global_batch = restored.config.get('train', {}).get('batch_size')
  if global_batch:
    return int(global_batch) // int(data.get('process_count', 1) or 1)
  return None


def convert_position(batches: int, saved_rows: Optional[int], rows: int,
                     global_batch: int) -> int:
  """`batches` of `saved_rows` rows as batches of `rows` rows, exactly.

  The train split's rows come in the same order whatever the batch size
  (tasks.get_dataset batches after packing), so the position is a row count;
  resuming at another per-host batch size skips rows // rows batches. A row
  count that is not a whole number of new batches cannot be resumed without
  training a row twice or skipping one: ConfigError.
  """
  if saved_rows is None or saved_rows == rows or not batches:
    return batches
  consumed = batches * saved_rows
  if consumed % rows:
    divisors = [str(d) for d in range(1, min(consumed, 4096) + 1)
                if consumed % d == 0]
    if len(divisors) > 10:
      divisors = ['...'] + divisors[-8:]
    raise ConfigError(
        f'The checkpoint consumed {consumed} rows per process ({batches} '
        f'batches of {saved_rows}); train.batch_size={global_batch} gives '
        f'{rows} rows per process per step, which does not divide {consumed}: '
        'the resume would train rows twice or skip some. Resume with the '
        f'batch size it was trained with ({saved_rows * jax.process_count()}) '
        f'or one giving rows per process that divide {consumed} '
        f'({", ".join(divisors)}).')
  converted = consumed // rows
  logging.info('train.batch_size changed: the checkpoint consumed %d rows per '
               'process (%d batches of %d); resuming after %d batches of %d '
               '(exact: no row trained twice or skipped).', consumed, batches,
               saved_rows, converted, rows)
  return converted


def check_stream_geometry(config, restored: Optional[checkpoints.Restored],
                          rows: int):
  """A stream task's position is a step of train.batch_size streams: another
  per-host batch size cuts other streams, so the resume is refused."""
  if restored is None:
    return
  saved = _saved_rows_per_batch(restored)
  if saved is not None and saved != rows:
    raise ConfigError(
        f'task {config.task.name} reads train.batch_size contiguous streams: '
        f'the checkpoint was trained with {saved} rows per process, this run '
        f'has {rows}, which cuts the corpus into other streams. Resume with '
        f'train.batch_size={saved * jax.process_count()}.')


def data_position(config, restored: Optional[checkpoints.Restored],
                  start_step: int, rows_per_batch: Optional[int] = None
                  ) -> DataPosition:
  """This process's data position: from the checkpoint's 'data' item
  (converted to `rows_per_batch`, this run's per-host batch size), or the
  start of the split (warnings when it cannot reproduce the run)."""
  saved = restored.data if restored is not None else {}
  pid = str(jax.process_index())
  consumed = int(saved.get('batches_consumed', {}).get(pid, 0))
  saved_processes = saved.get('process_count', jax.process_count())
  if saved_processes != jax.process_count():
    logging.warning(
        'The checkpoint was written by %d processes, this run has %d: each '
        'process skips %d batches of its new input shard, which is not the '
        'data an uninterrupted run would see next.', saved_processes,
        jax.process_count(), consumed)
  elif restored is not None and rows_per_batch:
    consumed = convert_position(consumed, _saved_rows_per_batch(restored),
                                int(rows_per_batch),
                                int(config.train.batch_size))
  seed = int(config.train.seed)
  if restored is not None and not config.train.data_iterator_checkpointing:
    # No saved position: a fresh order rather than replaying the first batches.
    consumed, seed = 0, seed + start_step
    logging.warning('train.data_iterator_checkpointing=False: the input '
                    'restarts with seed %d instead of resuming.', seed)
  return DataPosition(seed=seed, batches_consumed=consumed,
                      skipped_steps=int(saved.get('skipped_steps', 0)))


def prepare(config, workdir: str) -> str:
  """Step 1 of `setup`: the config validated, the task checked and the
  workdir created (ConfigError: one line). Returns the absolute workdir."""
  workdir = os.path.abspath(workdir)
  config_lib.validate(config)
  check_task(config)
  check_memory(config)
  make_workdir(workdir)
  return workdir


def setup(config, workdir: str) -> RunSetup:
  """Builds a run of `config` in `workdir` (see the module doc):
  `build(config, prepare(config, workdir))`.

  Raises:
    ConfigError: a config problem, before anything compiles.
    checkpoints.CheckpointError: no usable checkpoint could be read.
  """
  return build(config, prepare(config, workdir))


def build(config, workdir: str) -> RunSetup:
  """Steps 2-6 of `setup` in a prepared (absolute) `workdir`; the
  checkpointer is closed again when any of them fails."""
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  from t5x_lite.tasks import streams  # pylint: disable=g-import-not-at-top

  is_stream = streams.is_stream_task(config.task.name)
  # Training alone sees adversarial embeddings (eval_step below runs the
  # wrapped model's clean eval_fn).
  model = adversarial.for_training(objectives.build_model(config), config)
  tx, schedule = optimizers.make_optimizer(
      run_config.OptimizerConfig.from_config(config))
  mesh, batch_sharding, host, eval_host = _mesh_and_hosts(config)
  rules = partitioning.logical_rules(config.mesh.rules)
  abstract_state, state_shardings = trainer.abstract_train_state(
      model, tx, mesh, rules, dict(config.task.feature_lengths),
      batch_size=int(config.train.batch_size))
  logging.info('mesh %s; %d processes; this one reads input shard %d/%d '
               '(%d rows per step)', dict(mesh.shape), jax.process_count(),
               host.index, host.num_shards, host.per_host_batch_size)

  ckpt = checkpoints.Checkpointer(
      checkpoint_inspection.checkpoint_dir(workdir),
      keep=int(config.checkpoint.keep),
      async_save=bool(config.checkpoint.async_save))
  with ckpt.closed_on_error():
    init_rng, dropout_rng = jax.random.split(
        jax.random.PRNGKey(int(config.train.seed)))
    state, restored = _restore_or_init(config, model, tx, mesh, rules, ckpt,
                                       abstract_state, init_rng)
    start_step = int(jax.device_get(state.step))
    if is_stream:
      check_stream_geometry(config, restored, host.per_host_batch_size)
    position = data_position(config, restored, start_step,
                             host.per_host_batch_size)
    if is_stream:
      train_data = streams.get_stream_dataset(
          config, config.task.train_split,
          batch_size=host.per_host_batch_size, shard_id=host.index,
          num_shards=host.num_shards, skip_batches=position.batches_consumed)
    else:
      train_data = tasks.get_dataset(
          config, config.task.train_split,
          batch_size=host.per_host_batch_size, shard_id=host.index,
          num_shards=host.num_shards, seed=position.seed,
          shuffle=bool(config.task.shuffle),
          skip_batches=position.batches_consumed)

    train_step = trainer.make_train_step(
        model, tx, run_config.StepConfig.from_config(config), mesh, rules,
        state_shardings, batch_sharding, schedule=schedule)
    eval_step = trainer.make_eval_step(model, mesh, rules,
                                       state_shardings.params, batch_sharding)
    eval_data = EvalData(config, eval_host)
    stream_eval = None
    if is_stream:
      from t5x_lite import evaluation  # pylint: disable=g-import-not-at-top
      stream_eval = evaluation.StreamEval.build(
          model, mesh, rules, state_shardings.params, batch_sharding,
          eval_step, eval_data, eval_host.per_host_batch_size *
          eval_host.num_shards)
    # Only now: the run starts, with this config.
    write_config(config, workdir)
  return RunSetup(
      config=config, workdir=workdir, model=model, mesh=mesh,
      batch_sharding=batch_sharding, host=host, ckpt=ckpt, state=state,
      start_step=start_step, dropout_rng=dropout_rng, train_step=train_step,
      eval_step=eval_step, train_data=train_data,
      eval_data=eval_data, position=position,
      resumed=restored is not None, stream_eval=stream_eval)
