"""t5x_lite.tasks: the SeqIO side (the only package that imports TensorFlow).

Importing it registers every built-in task and mixture (no data needed until
a dataset is built). Public API:

  get_dataset(config, split, *, batch_size, shard_id=0, num_shards=1,
              seed=None, shuffle=None, skip_batches=0, num_epochs=None)
                              -> iterator of {feature: np.ndarray} batches
  get_tf_dataset(...)         -> the same as a tf.data.Dataset
  feature_converter_for(config, pack=None), task_feature_lengths(config)
                              -> what seqio.get_dataset / seqio.Evaluator need
  registered_names(), get_task_or_mixture(name), get_vocabulary(name),
  objective_of(name), layout_of(name), resolve_objective(config)
  register_text_to_text(name, source, prefix, *, metric_fns=(),
                        postprocess_fn=None, output_features=None,
                        vocabulary=None, input_format=None, ...)
  register_pretraining(name, source, objective, *, vocabulary=None,
                       text_key='text', input_format=None, field_names=None)
      source: a seqio DataSource, a glob, or {split: glob(s)} of text
      lines, TSV or JSONL (sources.py); vocabulary: a SentencePiece model
      path (python -m t5x_lite.tasks.vocab), a seqio.Vocabulary or None
  register_task(...), register_mixture(name, [(task, rate), ...])
  use_t5_vocabulary(path)     -> re-register the TFDS tasks with `path`
  check_data(name, splits), check_vocabulary(name, model_vocab_size)
                              -> DataError / ConfigError, one line, before
                                 anything compiles (checks.py)
  modules: preprocessors (the objectives' ops), vocabularies, feature_converters,
           metrics, postprocessors, corpora (data layout), sources (user
           files), checks; vocab (python -m t5x_lite.tasks.vocab, the CLI)
"""
import tensorflow as tf

# The input pipeline runs on the host CPU; keep TensorFlow off the
# accelerators JAX owns (T5X and big_vision do the same).
try:
  tf.config.set_visible_devices([], 'GPU')
except (RuntimeError, ValueError):  # devices already initialised
  pass

# pylint: disable=g-import-not-at-top,wrong-import-position
from t5x_lite.tasks import builtin
from t5x_lite.tasks import checks
from t5x_lite.tasks import corpora
from t5x_lite.tasks import feature_converters
from t5x_lite.tasks import metrics
from t5x_lite.tasks import postprocessors
from t5x_lite.tasks import preprocessors
from t5x_lite.tasks import sources
from t5x_lite.tasks import tfds_tasks
from t5x_lite.tasks import vocabularies
from t5x_lite.tasks.checks import check_data
from t5x_lite.tasks.checks import check_vocabulary
from t5x_lite.tasks.dataset import feature_converter_for
from t5x_lite.tasks.dataset import get_dataset
from t5x_lite.tasks.dataset import get_tf_dataset
from t5x_lite.tasks.dataset import task_feature_lengths
from t5x_lite.tasks.registry import get_task_or_mixture
from t5x_lite.tasks.registry import get_vocabulary
from t5x_lite.tasks.registry import layout_of
from t5x_lite.tasks.registry import objective_of
from t5x_lite.tasks.registry import register_pretraining
from t5x_lite.tasks.registry import register_mixture
from t5x_lite.tasks.registry import register_task
from t5x_lite.tasks.registry import register_text_to_text
from t5x_lite.tasks.registry import registered_names
from t5x_lite.tasks.registry import resolve_objective
from t5x_lite.tasks.sources import DataError
from t5x_lite.tasks.tfds_tasks import use_t5_vocabulary

builtin.register_all()
tfds_tasks.register_all()
