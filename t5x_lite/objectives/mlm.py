"""BERT's masked language model (Devlin et al. 2019).

15% of the positions are selected; of those 80% become [MASK], 10% a random
token, 10% stay. The encoder's vocabulary head predicts the original token at
every selected position (all three kinds: seqio's own converter would weight
only the [MASK]ed ones). The op is tasks/preprocessors.mask_tokens.
"""
import functools

from t5x_lite.objectives import registry

SELECT_RATE, MASK_RATE, RANDOM_RATE = 0.15, 0.8, 0.1


def _preprocessors(prep):
  return [functools.partial(prep.mask_tokens, select_rate=SELECT_RATE,
                            mask_rate=MASK_RATE, random_rate=RANDOM_RATE)]


OBJECTIVE = registry.register(registry.Objective(
    name='mlm',
    layout='masked_tokens',
    archs=('encoder_only',),
    summary='BERT MLM: 15% selected, 80% [MASK] / 10% random / 10% kept',
    preprocessors=_preprocessors,
    recipe='configs/pretrain_bert.py:tiny',
))
