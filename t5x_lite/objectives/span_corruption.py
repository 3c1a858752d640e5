"""T5 span corruption (Raffel et al. 2020): the default pretraining objective.

15% of the tokens, in spans of mean length 3, are replaced in the inputs by
unique sentinels (counting down from vocab_size - 1); the targets are the
dropped spans, each after its sentinel. Cross entropy on the targets, EOS on
both sides. The op is tasks/preprocessors.denoise_spans.
"""
import functools

from t5x_lite.objectives import registry

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


def _preprocessors(prep):
  return [functools.partial(prep.denoise_spans, noise_density=NOISE_DENSITY,
                            mean_noise_span_length=MEAN_NOISE_SPAN_LENGTH),
          prep.append_eos_after_trim]


OBJECTIVE = registry.register(registry.Objective(
    name='span_corruption',
    layout='inputs_targets',
    archs=('encoder_decoder', 'decoder_only'),
    summary='T5: 15% noise in spans of mean 3, unique sentinels',
    preprocessors=_preprocessors,
    recipe='configs/pretrain_t5.py:tiny',
))
