"""Typed views of the run's ConfigDict, built once at the edge.

Entrypoints (train_setup.setup, evaluation.evaluate, inference.run, ...) take
the ConfigDict a user wrote; below them, modules take these frozen dataclasses
or explicit arguments. The model's view is model_config.ModelConfig, decoding's
generation.DecodeSettings. Defaults here equal configs/default.py's (a test
checks). Nothing here imports JAX.
"""
import dataclasses


def _typed(cls, group, **extra):
  """cls(**group's fields, cast to the field types; missing ones default)."""
  kw = {f.name: f.type(group[f.name]) for f in dataclasses.fields(cls)
        if f.name in group and f.name not in extra}
  return cls(**kw, **extra)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """`config.optimizer` plus the step count schedules default to."""
  name: str = 'adafactor'  # adafactor (T5 settings) | adamw
  learning_rate: float = 1e-2  # peak learning rate of every schedule
  schedule: str = 'rsqrt'  # rsqrt (T5) | linear | cosine | constant
  warmup_steps: int = 1000  # warmup (rsqrt: a flat plateau at the peak)
  decay_steps: int = 0  # linear/cosine decay length; 0: num_steps
  end_learning_rate_fraction: float = 0.0  # linear/cosine: final lr / peak
  grad_clip_norm: float = 0.0  # global-norm clipping first; 0 disables
  weight_decay: float = 0.0  # adamw decoupled decay (adafactor: if set)
  b1: float = 0.9  # adamw first moment
  b2: float = 0.999  # adamw second moment
  eps: float = 1e-8  # adamw epsilon
  decay_rate: float = 0.8  # adafactor second-moment decay exponent (T5)
  clipping_threshold: float = 1.0  # adafactor update clipping; 0 disables
  multiply_by_parameter_scale: bool = True  # adafactor relative step (T5)
  factored: bool = True  # adafactor factored second moments
  min_dim_size_to_factor: int = 128  # adafactor: factor dims >= this
  adafactor_momentum: float = 0.0  # adafactor first moment; 0: none (T5)
  num_steps: int = 1000  # config.train.num_steps: decay_steps when it is 0

  @classmethod
  def from_config(cls, config) -> 'OptimizerConfig':
    """From the run's ConfigDict (optimizer group, train.num_steps)."""
    return _typed(cls, config.optimizer,
                  num_steps=int(config.train.num_steps))


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """What the train step reads of `config.train`."""
  microbatches: int = 1  # gradient accumulation passes per step
  loss_normalizing_factor: float = 0.0  # 0: divide by real target tokens
  skip_nonfinite_updates: bool = False  # drop (and count) non-finite updates

  @classmethod
  def from_config(cls, config) -> 'StepConfig':
    """From the run's ConfigDict (train group)."""
    return _typed(cls, config.train)
