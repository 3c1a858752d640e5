"""config -> batches: the one place the trainer gets its input pipeline.

get_dataset(config, split, batch_size=...) builds, for config.task.name:
  task/mixture (seqio, seeded) -> feature converter for config.model.arch and
  the feature layout of the task's objective (packing per config.task.pack) -> batch with
  drop_remainder -> skip `skip_batches` -> numpy dicts.
A given (config, split, seed, shard) yields the same batches every time, so
resuming at batch N is `skip_batches=N`.
"""
import seqio
import tensorflow as tf

from t5x_lite import lengths
from t5x_lite import objectives
from t5x_lite.tasks import feature_converters
from t5x_lite.tasks import registry


def feature_converter_for(config, pack=None) -> seqio.FeatureConverter:
  """The converter for config.task.name on config.model.arch.

  pack: None follows config.task.pack; evaluation passes pack=False.
  """
  name = config.task.name
  obj = objectives.get(registry.objective_of(name))
  return feature_converters.for_layout(
      obj.layout, config.model.arch,
      config.task.pack if pack is None else pack, name, obj.archs)


def task_feature_lengths(config):
  """seqio task_feature_lengths of the task's layout (t5x_lite/lengths.py)."""
  return lengths.task_lengths(registry.layout_of(config.task.name),
                              config.task.feature_lengths)


def get_tf_dataset(config, split, *, batch_size, shard_id=0, num_shards=1,
                   seed=None, shuffle=None, skip_batches=0, num_epochs=None,
                   pack=None) -> tf.data.Dataset:
  """The batched tf.data pipeline behind `get_dataset`."""
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  if not 0 <= shard_id < num_shards:
    raise ValueError(f'shard_id={shard_id} must be in [0, num_shards='
                     f'{num_shards}).')
  if skip_batches < 0:
    raise ValueError(f'skip_batches must be >= 0, got {skip_batches}.')
  name = config.task.name
  provider = registry.get_task_or_mixture(name)
  converter = feature_converter_for(config, pack)
  lengths = task_feature_lengths(config)
  seed = config.train.seed if seed is None else seed
  shuffle = config.task.shuffle if shuffle is None else shuffle
  kwargs = dict(sequence_length=lengths, split=split,
                use_cached=config.task.use_cached, shuffle=shuffle, seed=seed,
                num_epochs=num_epochs,
                # One shard is no sharding: avoids listing a source's files.
                shard_info=(seqio.ShardInfo(shard_id, num_shards)
                            if num_shards > 1 else None))
  if isinstance(provider, seqio.Task):
    kwargs['shuffle_buffer_size'] = config.task.shuffle_buffer_size
  ds = provider.get_dataset(**kwargs)
  ds = converter(ds, task_feature_lengths=lengths)
  ds = ds.batch(batch_size, drop_remainder=True)
  if skip_batches:
    ds = ds.skip(skip_batches)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def get_dataset(config, split, *, batch_size, shard_id=0, num_shards=1,
                seed=None, shuffle=None, skip_batches=0, num_epochs=None):
  """An iterator of {feature: np.ndarray [batch, ...]} batches.

  Args:
    config: the run's ConfigDict (task.*, model.arch, train.seed).
    split: 'train', 'validation', ...
    batch_size: examples per batch on this host (drop_remainder).
    shard_id, num_shards: this host's slice (seqio.ShardInfo).
    seed: data order and preprocessing randomness; default train.seed.
    shuffle: default config.task.shuffle.
    skip_batches: batches to skip (exact resume after N steps).
    num_epochs: None repeats forever.
  """
  return get_tf_dataset(
      config, split, batch_size=batch_size, shard_id=shard_id,
      num_shards=num_shards, seed=seed, shuffle=shuffle,
      skip_batches=skip_batches, num_epochs=num_epochs).as_numpy_iterator()
