"""Full causal language modelling (GPT): predict every next token.

Documents joined with EOS and cut into fixed chunks of inputs + targets
tokens, one causal sequence per row (seqio's LM converter). The op is
tasks/preprocessors.concat_and_chunk.
"""
from t5x_lite.objectives import registry


def _preprocessors(prep):
  return [prep.concat_and_chunk]


OBJECTIVE = registry.register(registry.Objective(
    name='causal_lm',
    layout='targets',
    archs=('decoder_only',),
    summary='GPT-style next-token prediction over fixed chunks',
    preprocessors=_preprocessors,
    task_features=('targets',),
    add_eos=False,
    recipe='configs/pretrain_lm.py:causal',
))
