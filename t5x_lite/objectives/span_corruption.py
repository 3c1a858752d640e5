"""T5 span corruption (Raffel et al. 2020): the default pretraining objective.

15% of the tokens, in spans of mean length 3, are replaced in the inputs by
unique sentinels (counting down from vocab_size - 1); the targets are the
dropped spans, each after its sentinel. Cross entropy on the targets, EOS on
both sides. The op is tasks/preprocessors.denoise_spans.
"""
import functools

from t5x_lite import lengths
from t5x_lite.model_config import ConfigError
from t5x_lite.objectives import registry

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


def _preprocessors(prep):
  return [functools.partial(prep.denoise_spans, noise_density=NOISE_DENSITY,
                            mean_noise_span_length=MEAN_NOISE_SPAN_LENGTH),
          prep.append_eos_after_trim]


def _check(config):
  """The targets must hold the corrupted spans of a full inputs row."""
  inputs = int(config.task.feature_lengths.get('inputs', 0))
  targets = int(config.task.feature_lengths.get('targets', 0))
  if inputs <= 0:
    raise ConfigError('span corruption needs task.feature_lengths.inputs > 0.')
  _, needed = lengths.random_spans_helper(inputs, NOISE_DENSITY,
                                          MEAN_NOISE_SPAN_LENGTH)
  if targets < needed:
    raise ConfigError(
        f'task.feature_lengths.targets={targets} is too short for span '
        f'corruption with inputs length {inputs}: it needs targets >= '
        f'{needed}; set --config.task.feature_lengths.targets={needed}.')


OBJECTIVE = registry.register(registry.Objective(
    name='span_corruption',
    layout='inputs_targets',
    archs=('encoder_decoder', 'decoder_only'),
    summary='T5: 15% noise in spans of mean 3, unique sentinels',
    preprocessors=_preprocessors,
    recipe='configs/pretrain_t5.py:tiny',
    check=_check,
))
