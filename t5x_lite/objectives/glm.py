"""GLM autoregressive blank infilling (Du et al. 2022), decoder-only.

Poisson(3) spans covering up to 15% of the tokens are cut out: part A is the
text with a [MASK] per span (attended bidirectionally), part B the spans in
random order, each after a start token [S] (causal), with GLM's 2D
positions: decoder_positions (part B: its [MASK]'s position) and
decoder_block_positions (1, 2, ... inside a span; needs
model.num_block_positions > 0 to be learned). The op is
tasks/preprocessors.blank_infilling; decoding a blank is
t5x_lite/objectives/glm_infill.py.
"""
from t5x_lite.model_config import ConfigError
from t5x_lite.objectives import registry


def _preprocessors(prep):
  return [prep.blank_infilling]


def _check(config):
  if config.model.num_block_positions < 0:
    raise ConfigError('model.num_block_positions must be >= 0 (0: no '
                      'block-position embedding).')


OBJECTIVE = registry.register(registry.Objective(
    name='glm',
    layout='blank_infilling',
    archs=('decoder_only',),
    summary='GLM blank infilling: part A with [MASK]s, spans generated',
    preprocessors=_preprocessors,
    task_features=('targets',),
    add_eos=False,
    recipe='configs/pretrain_glm.py:tiny',
    check=_check,
))
