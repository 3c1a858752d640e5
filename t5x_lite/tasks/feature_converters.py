"""Feature converters, by feature layout: seqio's where they fit, ours where
seqio has none.

feature layout    encoder_decoder        decoder_only              encoder_only
inputs_targets    EncDecFeatureConverter PrefixLMFeatureConverter  -
targets           -                      LMFeatureConverter        -
masked_tokens     -                      -                         MaskedTokensFeatureConverter
blank_infilling   -                      BlankInfillingFeatureConverter  -
pooled_label      -                      -                         PooledLabelFeatureConverter
masked_token_pairs -                     -                         MaskedTokenPairsFeatureConverter
token_labels      -                      -                         TokenLabelsFeatureConverter
span              -                      -                         SpanFeatureConverter
sentences         -                      -                         SentencesFeatureConverter

A task's layout is its objective's (t5x_lite/objectives/); the lengths each
layout takes are t5x_lite/lengths.py's. Ours: seqio's EncoderFeatureConverter
weights the loss only where the input is [MASK], which drops BERT's
random/kept positions; blank infilling (GLM) needs its 2D positions and its
own causal split; a pooled classifier needs a scalar label.
"""
import seqio
import tensorflow as tf

from t5x_lite.tasks.preprocessors import graph_fn

FeatureSpec = seqio.FeatureConverter.FeatureSpec


def _pack_or_pad_nonzero(converter, ds, lengths, shifted_keys):
  """seqio packing with features that may hold 0 inside an example.

  seqio's tf-ops packer measures each feature by its count of non-zero ids,
  so 0/1 masks and 0-based positions would be cut short. Those features are
  shifted by +1 for packing and back afterwards (padding stays 0).
  """
  if not converter.pack:
    return seqio.utils.trim_and_pad_dataset(ds, lengths)

  @graph_fn
  def _shift(x, delta):
    x = dict(x)
    for k in shifted_keys:
      x[k] = tf.maximum(x[k] + delta, 0) if delta < 0 else x[k] + delta
    return x

  ds = ds.map(lambda x: _shift(x, 1), num_parallel_calls=tf.data.AUTOTUNE)
  ds = seqio.utils.trim_and_pack_dataset(ds, lengths)
  return ds.map(lambda x: _shift(x, -1), num_parallel_calls=tf.data.AUTOTUNE)


class MaskedTokensFeatureConverter(seqio.FeatureConverter):
  """Masked tokens (BERT, ELECTRA): loss on every selected position.

  Task features: inputs (masked), targets (original), loss_weights, all the
  same length. Model features: encoder_input_tokens, encoder_target_tokens,
  encoder_loss_weights (+ encoder_segment_ids/positions when packed).
  """
  TASK_FEATURES = {
      'inputs': FeatureSpec(dtype=tf.int32),
      'targets': FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      'encoder_input_tokens': FeatureSpec(dtype=tf.int32),
      'encoder_target_tokens': FeatureSpec(dtype=tf.int32),
      'encoder_loss_weights': FeatureSpec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {
      'encoder_segment_ids': tf.int32,
      'encoder_positions': tf.int32,
  }

  def _convert_features(self, ds, task_feature_lengths):
    length = task_feature_lengths['inputs']
    if 'loss_weights' not in ds.element_spec:
      raise ValueError('MaskedTokensFeatureConverter needs the `loss_weights` '
                       'feature of the mask_tokens preprocessor.')
    ds = _pack_or_pad_nonzero(
        self, ds, {'inputs': length, 'targets': length, 'loss_weights': length},
        shifted_keys=('loss_weights',))

    @graph_fn
    def _convert(x):
      d = {'encoder_input_tokens': x['inputs'],
           'encoder_target_tokens': x['targets'],
           'encoder_loss_weights': x['loss_weights']}
      if self.pack:
        d['encoder_segment_ids'] = x['inputs_segment_ids']
        d['encoder_positions'] = x['inputs_positions']
      return d

    return ds.map(_convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    length = task_feature_lengths['inputs']
    keys = list(self.MODEL_FEATURES) + (
        list(self.PACKING_FEATURE_DTYPES) if self.pack else [])
    return {k: length for k in keys}


INFILLING_FEATURES = ('inputs', 'targets', 'loss_weights', 'causal_attention',
                'position_ids', 'block_position_ids')


class BlankInfillingFeatureConverter(seqio.FeatureConverter):
  """Blank infilling (GLM) for a decoder-only model (no shifting: the
  preprocessor already aligned inputs and targets).

  Model features: decoder_input_tokens, decoder_target_tokens,
  decoder_loss_weights, decoder_causal_attention (1 on part A),
  decoder_positions (GLM's first position id: the [MASK]'s position for part
  B) and decoder_block_positions (intra-span position, 0 on part A); packed
  rows add decoder_segment_ids (positions already restart per example).
  """
  TASK_FEATURES = {'targets': FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {
      'decoder_input_tokens': FeatureSpec(dtype=tf.int32),
      'decoder_target_tokens': FeatureSpec(dtype=tf.int32),
      'decoder_loss_weights': FeatureSpec(dtype=tf.int32),
      'decoder_causal_attention': FeatureSpec(dtype=tf.int32),
      'decoder_positions': FeatureSpec(dtype=tf.int32),
      'decoder_block_positions': FeatureSpec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {'decoder_segment_ids': tf.int32}

  def _convert_features(self, ds, task_feature_lengths):
    length = task_feature_lengths['targets']
    missing = [k for k in INFILLING_FEATURES if k not in ds.element_spec]
    if missing:
      raise ValueError(f'BlankInfillingFeatureConverter needs {missing} from '
                       'the blank_infilling preprocessor.')
    ds = _pack_or_pad_nonzero(
        self, ds, {k: length for k in INFILLING_FEATURES},
        shifted_keys=INFILLING_FEATURES[1:])

    @graph_fn
    def _convert(x):
      d = {'decoder_input_tokens': x['inputs'],
           'decoder_target_tokens': x['targets'],
           'decoder_loss_weights': x['loss_weights'],
           'decoder_causal_attention': x['causal_attention'],
           'decoder_positions': x['position_ids'],
           'decoder_block_positions': x['block_position_ids']}
      if self.pack:
        d['decoder_segment_ids'] = x['inputs_segment_ids']
      return d

    return ds.map(_convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    length = task_feature_lengths['targets']
    keys = list(self.MODEL_FEATURES) + (
        list(self.PACKING_FEATURE_DTYPES) if self.pack else [])
    return {k: length for k in keys}


class PooledLabelFeatureConverter(seqio.FeatureConverter):
  """Pooled classification: encoder_input_tokens [L] and an int `label` [].

  Never packs: a pooled first-token classifier reads one example per row.
  """
  TASK_FEATURES = {'inputs': FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {
      'encoder_input_tokens': FeatureSpec(dtype=tf.int32),
      'label': FeatureSpec(dtype=tf.int32, rank=0),
  }
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack=False, **kwargs):
    del pack  # a pooled classifier needs one example per row
    super().__init__(pack=False, **kwargs)

  def _convert_features(self, ds, task_feature_lengths):
    if 'label' not in ds.element_spec:
      raise ValueError('PooledLabelFeatureConverter needs an int32 '
                       '`label` feature.')
    ds = seqio.utils.trim_and_pad_dataset(
        ds, {'inputs': task_feature_lengths['inputs']})
    return ds.map(lambda x: {'encoder_input_tokens': x['inputs'],
                             'label': x['label']},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    return {'encoder_input_tokens': task_feature_lengths['inputs'], 'label': 1}


class SentencesFeatureConverter(seqio.FeatureConverter):
  """One text per row (sentence embeddings): encoder_input_tokens [L] from
  the task's `targets`.

  Never packs: a row's embedding pools over all of its real tokens, so two
  texts in one row would be embedded as one.
  """
  TASK_FEATURES = {'targets': FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {'encoder_input_tokens': FeatureSpec(dtype=tf.int32)}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack=False, **kwargs):
    del pack  # one text per row, always
    super().__init__(pack=False, **kwargs)

  def _convert_features(self, ds, task_feature_lengths):
    ds = seqio.utils.trim_and_pad_dataset(
        ds, {'targets': task_feature_lengths['targets']})
    return ds.map(lambda x: {'encoder_input_tokens': x['targets']},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    return {'encoder_input_tokens': task_feature_lengths['targets']}


class TokenLabelsFeatureConverter(seqio.FeatureConverter):
  """A label per token (tagging): encoder_input_tokens [L] and
  token_labels [L] (0 on padding, which the loss weights out by the tokens).

  Never packs: rows are single passages (a packed row would also tag across
  a passage boundary the model cannot see).
  """
  TASK_FEATURES = {'inputs': FeatureSpec(dtype=tf.int32),
                   'token_labels': FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {'encoder_input_tokens': FeatureSpec(dtype=tf.int32),
                    'token_labels': FeatureSpec(dtype=tf.int32)}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack=False, **kwargs):
    del pack  # one passage per row
    super().__init__(pack=False, **kwargs)

  def _convert_features(self, ds, task_feature_lengths):
    length = task_feature_lengths['inputs']
    ds = seqio.utils.trim_and_pad_dataset(
        ds, {'inputs': length, 'token_labels': length})
    return ds.map(lambda x: {'encoder_input_tokens': x['inputs'],
                             'token_labels': x['token_labels']},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    length = task_feature_lengths['inputs']
    return {'encoder_input_tokens': length, 'token_labels': length}


class SpanFeatureConverter(seqio.FeatureConverter):
  """Extractive span: encoder_input_tokens [L], encoder_context_mask [L]
  (1 where the answer may start or end) and int start_position /
  end_position [] (token indices, inclusive). Never packs.
  """
  TASK_FEATURES = {'inputs': FeatureSpec(dtype=tf.int32),
                   'context_mask': FeatureSpec(dtype=tf.int32)}
  MODEL_FEATURES = {
      'encoder_input_tokens': FeatureSpec(dtype=tf.int32),
      'encoder_context_mask': FeatureSpec(dtype=tf.int32),
      'start_position': FeatureSpec(dtype=tf.int32, rank=0),
      'end_position': FeatureSpec(dtype=tf.int32, rank=0),
  }
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack=False, **kwargs):
    del pack  # one question + passage per row
    super().__init__(pack=False, **kwargs)

  def _convert_features(self, ds, task_feature_lengths):
    missing = [k for k in ('start_position', 'end_position')
               if k not in ds.element_spec]
    if missing:
      raise ValueError(f'SpanFeatureConverter needs int32 {missing} '
                       'features.')
    length = task_feature_lengths['inputs']
    ds = seqio.utils.trim_and_pad_dataset(
        ds, {'inputs': length, 'context_mask': length})
    return ds.map(lambda x: {'encoder_input_tokens': x['inputs'],
                             'encoder_context_mask': x['context_mask'],
                             'start_position': x['start_position'],
                             'end_position': x['end_position']},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    length = task_feature_lengths['inputs']
    return {'encoder_input_tokens': length, 'encoder_context_mask': length,
            'start_position': 1, 'end_position': 1}


class MaskedTokenPairsFeatureConverter(seqio.FeatureConverter):
  """Sentence pairs for MLM + next-sentence prediction (BERT,
  tasks/sentence_pairs.py): the masked-token features plus
  encoder_token_type_ids [L] (0 on [CLS] A [SEP] and padding, 1 on B [SEP])
  and is_next_labels [] (1 IsNext, 0 NotNext).

  Never packs: the IsNext head reads each row's first token, so one pair
  per row.
  """
  TASK_FEATURES = {
      'inputs': FeatureSpec(dtype=tf.int32),
      'targets': FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      'encoder_input_tokens': FeatureSpec(dtype=tf.int32),
      'encoder_target_tokens': FeatureSpec(dtype=tf.int32),
      'encoder_loss_weights': FeatureSpec(dtype=tf.int32),
      'encoder_token_type_ids': FeatureSpec(dtype=tf.int32),
      'is_next_labels': FeatureSpec(dtype=tf.int32, rank=0),
  }
  PACKING_FEATURE_DTYPES = {}
  _PER_TOKEN = ('inputs', 'targets', 'loss_weights', 'token_type_ids')

  def __init__(self, pack=False, **kwargs):
    del pack  # one pair per row, always
    super().__init__(pack=False, **kwargs)

  def _convert_features(self, ds, task_feature_lengths):
    missing = [k for k in self._PER_TOKEN[2:] + ('is_next',)
               if k not in ds.element_spec]
    if missing:
      raise ValueError(f'MaskedTokenPairsFeatureConverter needs {missing} '
                       'from tasks/sentence_pairs.pair_and_mask.')
    length = task_feature_lengths['inputs']
    ds = seqio.utils.trim_and_pad_dataset(
        ds, {k: length for k in self._PER_TOKEN})
    return ds.map(lambda x: {'encoder_input_tokens': x['inputs'],
                             'encoder_target_tokens': x['targets'],
                             'encoder_loss_weights': x['loss_weights'],
                             'encoder_token_type_ids': x['token_type_ids'],
                             'is_next_labels': x['is_next']},
                  num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    length = task_feature_lengths['inputs']
    lengths = {k: length for k in self.MODEL_FEATURES}
    lengths['is_next_labels'] = 1
    return lengths


# layout -> {arch: converter class}
CONVERTERS = {
    'inputs_targets': {'encoder_decoder': seqio.EncDecFeatureConverter,
                       'decoder_only': seqio.PrefixLMFeatureConverter},
    'targets': {'decoder_only': seqio.LMFeatureConverter},
    'masked_tokens': {'encoder_only': MaskedTokensFeatureConverter},
    'blank_infilling': {'decoder_only': BlankInfillingFeatureConverter},
    'pooled_label': {'encoder_only': PooledLabelFeatureConverter},
    'masked_token_pairs': {'encoder_only': MaskedTokenPairsFeatureConverter},
    'token_labels': {'encoder_only': TokenLabelsFeatureConverter},
    'span': {'encoder_only': SpanFeatureConverter},
    'sentences': {'encoder_only': SentencesFeatureConverter},
}


def check_arch(layout, arch, name, archs=None):
  """Raises ValueError naming the arch(s) that fit: those of the task's
  objective (`archs`) that have a converter for `layout`."""
  if layout not in CONVERTERS:
    raise ValueError(f'Unknown feature layout {layout!r}; one of '
                     f'{", ".join(CONVERTERS)}.')
  fits = [a for a in (archs or CONVERTERS[layout]) if a in CONVERTERS[layout]]
  if arch not in fits:
    raise ValueError(
        f'Task {name!r} ({layout} batches) does not fit model.arch={arch!r}; '
        f'set --config.model.arch={fits[0]}'
        + (f' (or {fits[1]})' if len(fits) > 1 else '') + '.')


def for_layout(layout, arch, pack=True, name='?', archs=None):
  """The feature converter for `layout` batches on model `arch`."""
  check_arch(layout, arch, name, archs)
  return CONVERTERS[layout][arch](pack=pack)
