"""The objective registry: what is learned, by name.

An `Objective` holds everything specific to one pretraining or fine-tuning
objective; the core (models, config validation, tasks, evaluation, FLOPs)
looks it up by name and never spells one. The two words kept apart:

  objective       what is learned (span_corruption, mlm, electra, ...):
                  `config.objective.name`, a task's `objective=`.
  feature layout  how its batches are laid out (t5x_lite/lengths.py,
                  tasks/feature_converters.py): several objectives share one
                  (span corruption and prefix LM are both inputs_targets).

A new objective is one module that builds an `Objective` and calls
`register` (the built-ins are t5x_lite/objectives/*.py); a user's module does
the same and is imported before the task is looked up.
"""
import dataclasses
import difflib
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from t5x_lite import lengths
from t5x_lite.model_config import ConfigError

_REGISTRY: Dict[str, 'Objective'] = {}


@dataclasses.dataclass(frozen=True)
class Objective:
  """One objective. Only `name`, `layout` and `archs` are required.

  Attributes:
    name: the registry key (config.objective.name, a task's objective=).
    layout: the feature layout of its batches (t5x_lite/lengths.LAYOUTS).
    archs: the model.arch values that train it; the first is its recipe's.
    summary: one line for docs and listings.
    preprocessors: `fn(prep) -> [seqio preprocessor, ...]`, the steps after
      tokenization, given the module t5x_lite.tasks.preprocessors (so this
      module needs no TensorFlow: the ops live in tasks/).
    task_features: ('inputs', 'targets') or ('targets',): the features the
      task outputs; `add_eos` whether the vocabulary feature appends EOS.
    options: a frozen dataclass of the objective's own settings, the config
      group `objective.<name>.*` (None: no settings).
    make_model: `fn(module_cfg, options, **loss_kw) -> models.BaseModel`
      when the arch's own model does not serve (ELECTRA's generator +
      discriminator, a pooled classifier); None: models.arch_model.
    checkpoint_params: `fn(params) -> params` of what fine-tuning keeps
      (ELECTRA: the discriminator); None: all of them.
    fresh_params: param path prefixes ('token_classifier',) that fine-tuning
      from checkpoint.restore_from initialises instead of restoring: its new
      heads, which a pretraining checkpoint lacks (or has at another size).
    metrics: the extra eval/* metrics its model reports, for docs.
    recipe: the config file that trains it (`path[:arg]`).
    check: `fn(config) -> None` raising ConfigError for settings it cannot
      train with (before anything compiles).
    renamed_keys: {old config key: new key} of keys it moved; an old key
      fails validation with a line naming the new one.
  """
  name: str
  layout: str
  archs: Tuple[str, ...]
  summary: str = ''
  preprocessors: Optional[Callable[[Any], Sequence[Callable]]] = None
  task_features: Tuple[str, ...] = ('inputs', 'targets')
  add_eos: bool = True
  options: Optional[type] = None
  make_model: Optional[Callable[..., Any]] = None
  checkpoint_params: Optional[Callable[[Any], Any]] = None
  fresh_params: Tuple[str, ...] = ()
  metrics: Tuple[str, ...] = ()
  recipe: str = ''
  check: Optional[Callable[[Any], None]] = None
  renamed_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def options_from(self, objective_cfg) -> Any:
    """The typed options from config.objective (defaults when absent)."""
    if self.options is None:
      return None
    group = objective_cfg.get(self.name) if objective_cfg else None
    return self.options(**dict(group or {}))


def register(objective: Objective) -> Objective:
  """Adds (or replaces) `objective` under its name; returns it."""
  if objective.layout not in lengths.LAYOUTS:
    raise ValueError(f'Objective {objective.name!r}: layout '
                     f'{objective.layout!r} is not one of '
                     f'{", ".join(lengths.LAYOUTS)}.')
  _REGISTRY[objective.name] = objective
  return objective


def names() -> Tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def get(name: str) -> Objective:
  """The objective `name`; an unknown one fails naming the closest."""
  if name in _REGISTRY:
    return _REGISTRY[name]
  near = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
  hint = f' Did you mean {" or ".join(map(repr, near))}?' if near else ''
  raise ConfigError(
      f'Unknown objective {name!r}.{hint} Registered: {", ".join(names())} '
      '(a new one is one module calling t5x_lite.objectives.register).')


def all_objectives() -> Tuple[Objective, ...]:
  return tuple(_REGISTRY[n] for n in names())
