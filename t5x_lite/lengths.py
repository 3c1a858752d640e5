"""Sequence-length rules, in one place.

`config.task.feature_lengths` = {inputs: I, targets: T} are the task's
lengths. Two views of them:

  task_lengths(layout, fl)   what seqio's get_dataset and a feature converter
                             take, per feature layout (tasks/feature_converters.py):
    inputs_targets   {inputs: I, targets: T}
    targets          {targets: I + T}   one sequence (no inputs feature)
    blank_infilling  {targets: I + T}   one sequence, 2D positions
    masked_tokens    {inputs: I, targets: I}   aligned, same length
    pooled_label     {inputs: I}
    masked_token_pairs {inputs: I, targets: I}  [CLS] A [SEP] B [SEP], unpacked (NSP)
    token_labels     {inputs: I, token_labels: I}   a label per token
    span             {inputs: I, context_mask: I}   + start/end positions
    sentences        {targets: I}  one text per row, unpacked (contrastive)
  random_spans_helper(I, ...)  T5's rule for span corruption: the raw chunk
                             length whose corrupted inputs fill I, and the
                             targets length they need (512 -> 568, 114)
  model_lengths(arch, fl)    the network's sequence lengths:
    encoder_decoder  encoder I (or T), decoder T (or I)
    decoder_only     decoder I + T: the prefix-LM converter concatenates
                     inputs and targets; a one-sequence task has I + T too
    encoder_only     encoder I (or T when there are no inputs)
"""
from typing import Dict, Mapping

from t5x_lite.model_config import ConfigError

LAYOUT_LENGTHS = {
    'inputs_targets': lambda i, t: {'inputs': i, 'targets': t},
    'targets': lambda i, t: {'targets': i + t},
    'blank_infilling': lambda i, t: {'targets': i + t},
    'masked_tokens': lambda i, t: {'inputs': i, 'targets': i},
    'pooled_label': lambda i, t: {'inputs': i},
    'masked_token_pairs': lambda i, t: {'inputs': i, 'targets': i},
    'token_labels': lambda i, t: {'inputs': i, 'token_labels': i},
    'span': lambda i, t: {'inputs': i, 'context_mask': i},
    'sentences': lambda i, t: {'targets': i},
}
LAYOUTS = tuple(LAYOUT_LENGTHS)
# arch -> {model length: the task.feature_lengths it is made of}
MODEL_LENGTH_SOURCES = {
    'encoder_decoder': {'encoder': 'inputs', 'decoder': 'targets'},
    'decoder_only': {'decoder': 'inputs + targets'},
    'encoder_only': {'encoder': 'inputs'},
}


def task_lengths(layout: str, feature_lengths: Mapping[str, int]
                 ) -> Dict[str, int]:
  """seqio task_feature_lengths of a feature layout (module doc)."""
  if layout not in LAYOUT_LENGTHS:
    raise ValueError(f'Unknown feature layout {layout!r}; one of '
                     f'{", ".join(LAYOUTS)}.')
  fl = dict(feature_lengths)
  return LAYOUT_LENGTHS[layout](fl.get('inputs', 0), fl.get('targets', 0))


def model_lengths(arch: str, feature_lengths: Mapping[str, int]
                  ) -> Dict[str, int]:
  """The network's sequence lengths for `arch` (module doc)."""
  fl = dict(feature_lengths)
  inputs, targets = fl.get('inputs', 0), fl.get('targets', 0)
  if arch == 'encoder_decoder':
    return {'encoder': inputs or targets, 'decoder': targets or inputs}
  if arch == 'decoder_only':
    return {'decoder': inputs + targets}
  if arch == 'encoder_only':
    return {'encoder': inputs or targets}
  raise ConfigError(f'model.arch={arch!r} is not one of encoder_decoder, '
                    'decoder_only, encoder_only.')


def random_spans_helper(inputs_length, noise_density=0.15,
                        mean_noise_span_length=3.0,
                        extra_tokens_per_span_inputs=1,
                        extra_tokens_per_span_targets=1):
  """(raw tokens_length, targets_length) so span corruption needs no padding.

  T5's helper: the largest raw length whose corrupted inputs (kept tokens,
  one sentinel per noise span, EOS) fit `inputs_length`, and the length of
  the targets that go with it (noise tokens, a sentinel per span, EOS).
  inputs_length=512 -> (568, 114).
  """

  def _lengths(tokens_length):
    num_noise = int(round(tokens_length * noise_density))
    num_nonnoise = tokens_length - num_noise
    num_spans = int(round(num_noise / mean_noise_span_length))
    return (num_nonnoise + num_spans * extra_tokens_per_span_inputs + 1,
            num_noise + num_spans * extra_tokens_per_span_targets + 1)

  tokens_length = inputs_length - 1
  while _lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = _lengths(tokens_length)
  # T5's tweak for noise_density=0.5: keep targets <= inputs.
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length
