"""T5's prefix LM: a chunk of text split at a uniformly random point.

inputs = the prefix, targets = the rest. On an encoder-decoder the prefix is
encoded; on a decoder-only model it is a bidirectional prefix of one
sequence (seqio's PrefixLM converter). The op is
tasks/preprocessors.random_prefix_split.
"""
from t5x_lite.objectives import registry


def _preprocessors(prep):
  return [prep.random_prefix_split, prep.append_eos_after_trim]


OBJECTIVE = registry.register(registry.Objective(
    name='prefix_lm',
    layout='inputs_targets',
    archs=('decoder_only', 'encoder_decoder'),
    summary='T5 prefix LM: random split, prefix -> continuation',
    preprocessors=_preprocessors,
    recipe='configs/pretrain_lm.py:prefix',
))
