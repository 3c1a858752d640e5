"""Registering tasks and mixtures on seqio, and finding them again.

Each task records the objective it trains (t5x_lite/objectives/); the
objective's feature layout picks the feature converter for a model arch
(feature_converters.py). A task registered straight on seqio by a user
trains `objectives.for_features(...)`: supervised text-to-text when it has
inputs and targets, causal LM when only targets.
"""
import difflib
import functools

import seqio
import tensorflow as tf

from t5x_lite import objectives
from t5x_lite.model_config import ConfigError
from t5x_lite.tasks import corpora
from t5x_lite.tasks import feature_converters
from t5x_lite.tasks import preprocessors as prep
from t5x_lite.tasks import sources
from t5x_lite.tasks import vocabularies

DEFAULT_SHUFFLE_BUFFER = 10_000
_OBJECTIVE = {}  # task name -> objective name
# Optional built-ins: name -> corpus whose build decides whether it exists.
OPTIONAL_TASKS = {'translate_en_de': 'translate_en_de'}


def register_task(name, source, preprocessors, output_features, *,
                  objective=None, metric_fns=(), postprocess_fn=None,
                  shuffle_buffer_size=DEFAULT_SHUFFLE_BUFFER) -> seqio.Task:
  """seqio.TaskRegistry.add plus the objective it trains (a registered
  objective's name; None: objectives.for_features of its output features);
  re-registering replaces."""
  objective = (objectives.get(objective) if objective
               else objectives.for_features(tuple(output_features))).name
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
                          vocabulary=None, input_format=None,
                          shuffle_buffer_size=DEFAULT_SHUFFLE_BUFFER
                         ) -> seqio.Task:
  """Registers `inputs = prefix + x[input_key]` -> `targets = x[target_key]`.

  Args:
    name: the task name.
    source: a seqio DataSource yielding dicts of strings or text lines
      `input<TAB>target` (e.g. seqio.TextLineDataSource), parsed into
      `field_names` (default: (input_key, target_key)); or files
      (tasks/sources.py): a glob, a list of globs (the train split) or a
      dict split -> glob(s), TSV or JSONL (the input_key and target_key
      fields of each object) by extension or `input_format`.
    prefix: prepended to the input text, T5 style ("sentiment: ").
    metric_fns: seqio metric fns `(targets, predictions) -> dict`, e.g.
      t5x_lite.tasks.metrics.accuracy.
    postprocess_fn: applied to decoded predictions and targets before metrics.
    output_features: default: inputs/targets with `vocabulary`.
    input_key, target_key, field_names: where the texts are.
    preprocessors: run first, on the raw examples (e.g. a custom parser).
    vocabulary: None (the shipped corpus vocabulary), a SentencePiece model
      path (python -m t5x_lite.tasks.vocab) or a seqio.Vocabulary.
    input_format: 'lines' | 'tsv' | 'jsonl' for a files source whose
      extension does not say.
    shuffle_buffer_size: seqio's per-task shuffle buffer.
  """
  fields = tuple(field_names or (input_key, target_key))
  source, _ = sources.as_source(source, input_format,
                                keys=(input_key, target_key))
  objective = objectives.get(objectives.SUPERVISED)
  steps = list(preprocessors) + [
      functools.partial(_parse_lines, field_names=fields),
      functools.partial(prep.to_inputs_and_targets, prefix=prefix,
                        input_key=input_key, target_key=target_key),
      seqio.preprocessors.tokenize,
      seqio.CacheDatasetPlaceholder(),
  ] + list(objective.preprocessors(prep))
  return register_task(
      name, source, steps,
      output_features or vocabularies.output_features(
          vocabularies.vocabulary(vocabulary)),
      objective=objective.name, metric_fns=metric_fns,
      postprocess_fn=postprocess_fn, shuffle_buffer_size=shuffle_buffer_size)


def register_pretraining(name, source, objective, *, vocabulary=None,
                         text_key='text', input_format=None, field_names=None,
                         metric_fns=(),
                         shuffle_buffer_size=DEFAULT_SHUFFLE_BUFFER
                         ) -> seqio.Task:
  """Registers `objective` (a registered objective's name) over any text.

  Args:
    name: the task name.
    source: a seqio DataSource of text lines (or of dicts with `text_key`),
      or files (tasks/sources.py): a glob, a list of globs (the train split)
      or a dict split -> glob(s); text lines (one document each), TSV or
      JSONL by extension or `input_format`.
    objective: 'span_corruption', 'mlm', ... (t5x_lite.objectives.names()).
    vocabulary: None (the shipped corpus vocabulary), a SentencePiece model
      path (python -m t5x_lite.tasks.vocab) or a seqio.Vocabulary.
    text_key: the JSONL field (or TSV column of `field_names`) of the text.
    input_format: 'lines' | 'tsv' | 'jsonl', when the extension does not say.
    field_names: TSV column names (default: the text is the first column).
    metric_fns, shuffle_buffer_size: as seqio.Task's.

  The steps: the text becomes 'targets' (empty ones dropped), is tokenized,
  then the objective's own preprocessors (objectives/<name>.py) run, with
  its output features (inputs and/or targets, EOS as the objective adds it).
  """
  obj = objectives.get(objective)
  if obj.preprocessors is None:
    raise ValueError(f'Objective {obj.name!r} has no preprocessors: register '
                     'its task with register_task and your own steps.')
  source, fmt = sources.as_source(source, input_format, keys=(text_key,))
  if fmt == 'tsv':
    field_names = tuple(field_names or (text_key,))
    if text_key not in field_names:
      raise ValueError(f'text_key={text_key!r} is not one of the TSV '
                       f'field_names {field_names}.')
  elif fmt == 'lines':
    field_names = None
  vocab = vocabularies.vocabulary(vocabulary)
  return register_task(
      name, source,
      [functools.partial(sources.text_as_targets, text_key=text_key,
                         field_names=field_names),
       seqio.preprocessors.tokenize,
       seqio.CacheDatasetPlaceholder()] + list(obj.preprocessors(prep)),
      vocabularies.output_features(vocab, add_eos=obj.add_eos,
                                   keys=obj.task_features),
      objective=obj.name, metric_fns=metric_fns,
      shuffle_buffer_size=shuffle_buffer_size)


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


def _task_objective(task) -> str:
  name = _OBJECTIVE.get(task.name)
  return name or objectives.for_features(tuple(task.output_features)).name


def _subtask_objectives(name):
  """(the task's or mixture's seqio subtasks, their objective names)."""
  subtasks = seqio.get_subtasks(get_task_or_mixture(name))
  return subtasks, {_task_objective(t) for t in subtasks}


def objective_of(name) -> str:
  """The objective a task trains; for a mixture the one its tasks share, or
  (tasks of several objectives with one layout and the arch's own model,
  e.g. span corruption mixed with supervised tasks) the first task's."""
  subtasks, found = _subtask_objectives(name)
  found = sorted(found)
  if len(found) == 1:
    return found[0]
  objs = [objectives.get(n) for n in found]
  layouts = {o.layout for o in objs}
  custom = [o.name for o in objs if o.make_model is not None]
  if len(layouts) != 1 or custom:
    raise ConfigError(
        f'Mixture {name!r} mixes objectives {found} that need '
        + (f'different feature layouts {sorted(layouts)}'
           if len(layouts) != 1 else f'models of their own ({custom})')
        + '; its tasks must share one model and one feature converter.')
  return _task_objective(subtasks[0])


def layout_of(name) -> str:
  """The feature layout of a task's (or mixture's) batches."""
  return objectives.get(objective_of(name)).layout


def resolve_objective(config) -> str:
  """Fills config.objective.name from config.task.name when it is '' (in
  place, unlocked); a set name must be the task's. Returns the name."""
  task_objective = objective_of(config.task.name)
  name = config.objective.name
  _, allowed = _subtask_objectives(config.task.name)
  if name and name not in allowed:
    raise ConfigError(
        f'task {config.task.name!r} trains objective {task_objective!r} but '
        f'objective.name={name!r}; set --config.objective.name='
        f'{task_objective} (or leave it empty to follow the task).')
  if not name:
    with config.unlocked():
      config.objective.name = task_objective
  return task_objective


def get_vocabulary(name) -> seqio.Vocabulary:
  """The vocabulary of a task's (or mixture's) targets, else its inputs."""
  features = get_task_or_mixture(name).output_features
  key = 'targets' if 'targets' in features else 'inputs'
  return features[key].vocabulary
