"""GLM autoregressive blank infilling (Du et al. 2022), decoder-only.

Training: Poisson(3) spans covering up to 15% of the tokens are cut out:
part A is the text with a [MASK] per span (attended bidirectionally), part B
the spans in random order, each after a start token [S] (causal), with GLM's
2D positions: decoder_positions (part B: its [MASK]'s position) and
decoder_block_positions (1, 2, ... inside a span; needs
model.num_block_positions > 0 to be learned). The op is
tasks/preprocessors.blank_infilling.

Inference (`infill`): fill one [MASK] of part A, in the layout training used,
for a single span:

    decoder input  k:  0 .. A-1         A      A+1 ..
    tokens             part A           [S]    the span, generated
    causal_attention   1 (bidirectional) 0      0
    positions          k                mask_pos (the [MASK]'s position)
    block_positions    0                1      2, 3, ...

Part A needs no BOS: its first token is decoder input 0. A decode-mode KV
cache knows only positions 0, 1, 2, ..., so `infill` goes through
`generation.predict_with_features`, which reruns the forward each step.
Vocabulary ids come in as arguments (tasks/vocabularies.py `mask_id`,
`span_start_id`): this module stays free of TensorFlow and seqio.
"""
from typing import Dict, Union

import jax
import numpy as np

from t5x_lite import generation
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


# ---- inference: filling a blank --------------------------------------------


def infill_tokens(part_a: np.ndarray, start_id: int,
                  span_len: int) -> np.ndarray:
  """part_a [n, A] -> decoder_input_tokens [n, A + 1 + span_len]: part A,
  [S], then zeros for the span and its EOS (span_len + 1 slots)."""
  part_a = np.asarray(part_a, np.int32)
  n, a = part_a.shape
  if (part_a == 0).any():
    raise ValueError('glm.infill: part_a must not hold 0 (padding): a zero '
                     'inside part A would be fed as a pad token. Give rows of '
                     'equal length, or infill them one at a time.')
  tokens = np.zeros((n, a + 1 + span_len), np.int32)
  tokens[:, :a] = part_a
  tokens[:, a] = start_id
  return tokens


def infill_positions(part_a_len: int, mask_pos: Union[int, np.ndarray],
                     length: int, n: int):
  """GLM's 2D positions of the buffer -> (decoder_positions [n, length],
  decoder_block_positions [n, length]).

  Part A keeps its own positions and block position 0; part B ([S] and the
  span) takes the [MASK]'s position `mask_pos` (int or [n]) and block
  positions 1, 2, ...
  """
  k = np.arange(length)[None, :]  # [1, length]
  mask_pos = np.broadcast_to(np.asarray(mask_pos, np.int32).reshape(-1, 1),
                             (n, 1))
  part_a = k < part_a_len
  positions = np.where(part_a, k, mask_pos).astype(np.int32)
  block = np.broadcast_to(np.where(part_a, 0, k - part_a_len + 1),
                          (n, length)).astype(np.int32)
  return positions, block


def infill_batch(part_a: np.ndarray, mask_pos: Union[int, np.ndarray],
                 start_id: int, span_len: int) -> Dict[str, np.ndarray]:
  """The decoder-only batch `generation.predict_with_features` decodes: tokens,
  bidirectional part A (decoder_causal_attention) and the 2D positions."""
  tokens = infill_tokens(part_a, start_id, span_len)
  n, length = tokens.shape
  a = np.asarray(part_a).shape[1]
  mask_pos_arr = np.asarray(mask_pos)
  if (mask_pos_arr < 0).any() or (mask_pos_arr >= a).any():
    raise ValueError(f'glm.infill: mask_pos {mask_pos} must index part A '
                     f'(0..{a - 1}), where its [MASK] token is.')
  positions, block = infill_positions(a, mask_pos, length, n)
  causal = np.broadcast_to((np.arange(length) < a).astype(np.int32),
                           (n, length))
  return {'decoder_input_tokens': tokens,
          'decoder_causal_attention': np.ascontiguousarray(causal),
          'decoder_positions': positions,
          'decoder_block_positions': np.ascontiguousarray(block)}


def infill(model, params, part_a, mask_pos, start_id: int, eos_id: int,
           rng: jax.Array, temperature: float = 0.0, topk: int = 0,
           topp: float = 1.0, span_len: int = 12) -> np.ndarray:
  """Generates the span of each row's [MASK].

  Args:
    model: a decoder-only t5x_lite.models model trained on GLM infilling
      (model.config.num_block_positions > 0).
    params: its params.
    part_a: [n, A] token ids of part A, the [MASK] included, no padding.
    mask_pos: the [MASK]'s index in part A (int, or [n] per row).
    start_id: the part-B start token [S] (vocabularies.span_start_id).
    eos_id: ends the span.
    rng: sampling key (unused when temperature is 0).
    temperature: 0 decodes greedily; else sampling with top-k/top-p.
    topk: keep the k most likely tokens (0: off).
    topp: nucleus mass (1.0: off).
    span_len: span tokens at most (one more slot holds its EOS).

  Returns:
    [n, span_len + 1] int32: the span, then EOS, then zeros.
  """
  batch = infill_batch(part_a, mask_pos, start_id, span_len)
  settings = generation.DecodeSettings(
      method='greedy' if temperature == 0.0 else 'sample',
      temperature=temperature, top_k=topk, top_p=topp, eos_id=eos_id)
  tokens, _ = generation.predict_with_features(model, params, batch, settings,
                                             rng)
  return np.asarray(tokens)[:, :span_len + 1]
