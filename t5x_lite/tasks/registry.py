"""Registering tasks and mixtures on seqio, and finding them again.

Each task records its objective kind (text_to_text, causal_lm, masked_lm,
glm, classification), which picks the feature converter for a model arch
(feature_converters.py). A task registered straight on seqio by a user is
text_to_text when it has inputs and targets, causal_lm when only targets.
"""
import difflib
import functools

import seqio
import tensorflow as tf

from t5x_lite.config import ConfigError
from t5x_lite.tasks import corpora
from t5x_lite.tasks import feature_converters
from t5x_lite.tasks import preprocessors as prep
from t5x_lite.tasks import vocabularies

DEFAULT_SHUFFLE_BUFFER = 10_000
_OBJECTIVE = {}  # task name -> objective kind
# Optional built-ins: name -> corpus whose build decides whether it exists.
OPTIONAL_TASKS = {'translate_en_de': 'translate_en_de'}


def register_task(name, source, preprocessors, output_features, *,
                  objective='text_to_text', metric_fns=(), postprocess_fn=None,
                  shuffle_buffer_size=DEFAULT_SHUFFLE_BUFFER) -> seqio.Task:
  """seqio.TaskRegistry.add plus the objective kind; re-registering replaces."""
  if objective not in feature_converters.OBJECTIVE_KINDS:
    raise ValueError(f'objective={objective!r}; use one of '
                     f'{", ".join(feature_converters.OBJECTIVE_KINDS)}.')
  seqio.TaskRegistry.remove(name)
  task = seqio.TaskRegistry.add(
      name, source=source, preprocessors=list(preprocessors),
      output_features=output_features, metric_fns=list(metric_fns),
      postprocess_fn=postprocess_fn, shuffle_buffer_size=shuffle_buffer_size)
  _OBJECTIVE[name] = objective
  return task


def _parse_lines(dataset, field_names):
  """TSV text lines -> dicts; a source that already yields dicts passes."""
  if isinstance(dataset.element_spec, tf.TensorSpec):
    return prep.parse_tsv(dataset, field_names)
  return dataset


def register_text_to_text(name, source, prefix, *, metric_fns=(),
                          postprocess_fn=None, output_features=None,
                          input_key='inputs', target_key='targets',
                          field_names=None, preprocessors=(),
                          shuffle_buffer_size=DEFAULT_SHUFFLE_BUFFER
                         ) -> seqio.Task:
  """Registers `inputs = prefix + x[input_key]` -> `targets = x[target_key]`.

  Args:
    name: the task name.
    source: a seqio DataSource yielding dicts of strings, or text lines
      `input<TAB>target` (e.g. seqio.TextLineDataSource), parsed into
      `field_names` (default: (input_key, target_key)).
    prefix: prepended to the input text, T5 style ("sentiment: ").
    metric_fns: seqio metric fns `(targets, predictions) -> dict`, e.g.
      t5x_lite.tasks.metrics.accuracy.
    postprocess_fn: applied to decoded predictions and targets before metrics.
    output_features: default: inputs/targets with the corpus vocabulary.
    input_key, target_key, field_names: where the texts are.
    preprocessors: run first, on the raw examples (e.g. a custom parser).
    shuffle_buffer_size: seqio's per-task shuffle buffer.
  """
  fields = tuple(field_names or (input_key, target_key))
  steps = list(preprocessors) + [
      functools.partial(_parse_lines, field_names=fields),
      functools.partial(prep.text_to_text, prefix=prefix, input_key=input_key,
                        target_key=target_key),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
      seqio.preprocessors.append_eos_after_trim,
  ]
  return register_task(
      name, source, steps,
      output_features or vocabularies.output_features(
          vocabularies.default_vocabulary()),
      objective='text_to_text', metric_fns=metric_fns,
      postprocess_fn=postprocess_fn, shuffle_buffer_size=shuffle_buffer_size)


def register_mixture(name, tasks_and_rates) -> seqio.Mixture:
  """seqio.MixtureRegistry.add([(task, rate), ...]); re-registering replaces."""
  seqio.MixtureRegistry.remove(name)
  return seqio.MixtureRegistry.add(name, list(tasks_and_rates))


def registered_names():
  """Every registered task and mixture name, sorted."""
  return sorted(set(seqio.TaskRegistry.names()) |
                set(seqio.MixtureRegistry.names()))


def get_task_or_mixture(name):
  """The seqio Task or Mixture; unknown names fail naming the closest ones."""
  if name in seqio.MixtureRegistry.names():
    return seqio.MixtureRegistry.get(name)
  if name in seqio.TaskRegistry.names():
    return seqio.TaskRegistry.get(name)
  if name in OPTIONAL_TASKS:
    reason = ((corpora.read_manifest() or {}).get('unavailable', {})
              .get(OPTIONAL_TASKS[name]))
    raise ConfigError(
        f'Task {name!r} is not registered: its corpus was not built '
        f'({reason or corpora.BUILD_HINT}); `python -m data.build --force` '
        'retries.')
  near = difflib.get_close_matches(name, registered_names(), n=3, cutoff=0.0)
  raise ConfigError(
      f'Unknown task or mixture {name!r}; closest registered: '
      f'{", ".join(near)} (all: t5x_lite.tasks.registered_names()).')


def objective_of(name) -> str:
  """The objective kind of a task, or the one kind all of a mixture's share."""
  provider = get_task_or_mixture(name)
  kinds = set()
  for task in seqio.get_subtasks(provider):
    kind = _OBJECTIVE.get(task.name)
    if kind is None:
      kind = 'text_to_text' if 'inputs' in task.output_features else 'causal_lm'
    kinds.add(kind)
  if len(kinds) != 1:
    raise ConfigError(f'Mixture {name!r} mixes objectives {sorted(kinds)}; '
                      'its tasks need one feature converter.')
  return kinds.pop()


def get_vocabulary(name) -> seqio.Vocabulary:
  """The vocabulary of a task's (or mixture's) targets, else its inputs."""
  features = get_task_or_mixture(name).output_features
  key = 'targets' if 'targets' in features else 'inputs'
  return features[key].vocabulary
