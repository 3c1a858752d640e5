"""The pretraining objectives' seqio ops (written here, not from `t5`).

Every random choice uses stateless ops on seeds from
`seqio.map_over_dataset(num_seeds=...)`, so a pipeline built with a seed
(seqio's `map_seed_manager`, which `get_dataset(seed=...)` sets) is
reproducible example for example.

Ops, named for what they do; each objective module (t5x_lite/objectives/)
picks its ops and their rates (each takes `sequence_length` and
`output_features` from seqio):
  denoise_spans        T5 span corruption: noise in spans (mean length 3 at
                       15%), unique sentinels counting down from
                       vocab_size - 1, EOS on both sides.
  random_prefix_split  T5 prefix LM: a random split of a chunk,
                       inputs|targets.
  concat_and_chunk     full causal LM: EOS after each document, fixed chunks.
  mask_tokens          BERT/ELECTRA input masking: a share of positions
                       selected; of those some [MASK], some random, the rest
                       kept (BERT 80/10/10, ELECTRA 85/0/15).
  blank_infilling      GLM: Poisson(3) spans up to 15% of tokens; part A with
                       [MASK]s (bidirectional), part B the shuffled spans each
                       after a start token (causal), 2D positions.
The [MASK]/[CLS]/[S] ids are in t5x_lite/tasks/vocabularies.py.
"""
import seqio
import tensorflow as tf

from t5x_lite import lengths
from t5x_lite.tasks import vocabularies

AUTOTUNE = tf.data.AUTOTUNE
# Our map functions branch only on Python values, never on tensors, so they
# skip autograph's source-to-source conversion: building a pipeline is then
# several seconds faster (conversion dominated the time to the first batch).
graph_fn = tf.autograph.experimental.do_not_convert

# ---- plumbing: text lines and TSV rows to features ---------------------------------


@seqio.map_over_dataset
@graph_fn
def line_to_targets(line):
  """A TextLineDataSource line becomes {'targets': line}."""
  return {'targets': line}


def parse_tsv(dataset, field_names):
  """TSV lines to {field: string}; a missing field reads as ''."""

  @graph_fn
  def _parse(line):
    fields = tf.io.decode_csv(line, record_defaults=[''] * len(field_names),
                              field_delim='\t', use_quote_delim=False)
    return dict(zip(field_names, fields))

  return dataset.map(_parse, num_parallel_calls=AUTOTUNE)


def to_inputs_and_targets(dataset, prefix, input_key='inputs',
                          target_key='targets'):
  """{'inputs': prefix + x[input_key], 'targets': x[target_key]}."""

  @graph_fn
  def _fn(x):
    return {'inputs': tf.strings.join([prefix, x[input_key]]),
            'targets': x[target_key]}

  return dataset.map(_fn, num_parallel_calls=AUTOTUNE)


def label_to_id(dataset, label_classes, label_key='label', text_key='text',
                prefix=''):
  """{'inputs': prefix + text, 'label': index of the label string (or -1)}."""
  table = tf.constant(list(label_classes))

  @graph_fn
  def _fn(x):
    hits = tf.where(tf.equal(table, x[label_key]))[:, 0]
    label = tf.cond(tf.size(hits) > 0, lambda: tf.cast(hits[0], tf.int32),
                    lambda: tf.constant(-1, tf.int32))
    return {'inputs': tf.strings.join([prefix, x[text_key]]), 'label': label}

  return dataset.map(_fn, num_parallel_calls=AUTOTUNE)


def prepend_cls_and_append_eos(dataset, output_features, sequence_length=None):
  """inputs = [CLS] + inputs[:L-2] + [EOS] for pooled classification."""
  vocab = output_features['inputs'].vocabulary
  cls, eos = vocabularies.cls_id(vocab), vocab.eos_id
  limit = (sequence_length or {}).get('inputs')

  @graph_fn
  def _fn(x):
    tokens = x['inputs'] if limit is None else x['inputs'][:limit - 2]
    x = dict(x)
    x['inputs'] = tf.concat([[cls], tokens, [eos]], 0)
    return x

  return dataset.map(_fn, num_parallel_calls=AUTOTUNE)


# ---- T5 chain: concatenate documents, cut fixed-length chunks ---------------------


def reduce_concat_tokens(dataset, feature_key='targets', batch_size=128):
  """Concatenates `batch_size` examples' tokens into one (T5's helper)."""
  dataset = dataset.map(lambda x: {feature_key: x[feature_key]},
                        num_parallel_calls=AUTOTUNE)
  dataset = dataset.padded_batch(batch_size, padded_shapes={feature_key: [-1]})

  @graph_fn
  def _flatten(x):
    tokens = tf.reshape(x[feature_key], [-1])
    return {feature_key: tf.boolean_mask(tokens, tf.cast(tokens, tf.bool))}

  return dataset.map(_flatten, num_parallel_calls=AUTOTUNE)


def split_tokens(dataset, max_tokens_per_segment, feature_key='targets',
                 min_tokens=1):
  """Cuts each example into segments of `max_tokens_per_segment` tokens.

  The last segment keeps the remainder; segments shorter than `min_tokens`
  are dropped. (T5's split_tokens with a fixed length, vectorised as a
  ragged reshape + unbatch instead of flat_map.)
  """
  length = int(max_tokens_per_segment)
  if length < 1:
    raise ValueError(f'split_tokens needs a positive length, got {length}.')

  @graph_fn
  def _split(x):
    tokens = x[feature_key]
    n = tf.size(tokens)
    num_segments = (n + length - 1) // length
    padded = tf.pad(tokens, [[0, num_segments * length - n]])
    seg_lengths = tf.minimum(length, n - tf.range(num_segments) * length)
    return {feature_key: tf.RaggedTensor.from_tensor(
        tf.reshape(padded, [-1, length]), lengths=seg_lengths)}

  dataset = dataset.map(_split, num_parallel_calls=AUTOTUNE).unbatch()
  # unbatch leaves a ragged_rank-0 RaggedTensorSpec; a map makes it dense.
  dataset = dataset.map(lambda x: {feature_key: x[feature_key]},
                        num_parallel_calls=AUTOTUNE)
  if min_tokens > 1:
    dataset = dataset.filter(lambda x: tf.size(x[feature_key]) >= min_tokens)
  return dataset


def concat_and_split(dataset, length, min_tokens=1):
  """Documents' 'targets' joined, then cut into `length`-token chunks."""
  return split_tokens(reduce_concat_tokens(dataset), length,
                      min_tokens=min_tokens)


# ---- T5 span corruption -------------------------------------------------------------


# T5's length rule of span corruption, a pure function (t5x_lite/lengths.py):
# the objective's config check uses it before any pipeline is built.
random_spans_helper = lengths.random_spans_helper


def random_spans_noise_mask(length, noise_density, seeds,
                            mean_noise_span_length=3.0):
  """T5's noise mask: alternating non-noise/noise spans, noise last.

  Exactly round(length * noise_density) noise tokens in
  round(noise / mean_noise_span_length) spans; span lengths are a uniformly
  random composition (stateless shuffle of the span boundaries).
  """
  orig_length = length
  length = tf.maximum(length, 2)  # avoid degeneracy
  num_noise = tf.cast(tf.round(tf.cast(length, tf.float32) * noise_density),
                      tf.int32)
  num_noise = tf.minimum(tf.maximum(num_noise, 1), length - 1)
  num_spans = tf.cast(
      tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length),
      tf.int32)
  num_spans = tf.maximum(num_spans, 1)
  num_nonnoise = length - num_noise

  def _random_segmentation(num_items, num_segments, seed):
    # [num_segments] positive lengths summing to num_items.
    first_in_segment = tf.pad(
        seqio.utils.stateless_shuffle(
            tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32),
            seed), [[1, 0]])
    segment_id = tf.cumsum(first_in_segment)
    return tf.math.segment_sum(tf.ones_like(segment_id), segment_id)

  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
  nonnoise_lengths = _random_segmentation(num_nonnoise, num_spans, seeds[1])
  interleaved = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], 1),
                           [num_spans * 2])
  span_starts = tf.cumsum(interleaved)[:-1]
  span_start_indicator = tf.math.unsorted_segment_sum(
      tf.ones_like(span_starts), span_starts, length)
  span_num = tf.cumsum(span_start_indicator)
  return tf.equal(span_num % 2, 1)[:orig_length]


def sentinel_id(vocabulary):
  """T5's first sentinel, `<extra_id_0>`; later ones count down."""
  return vocabulary.vocab_size - 1


def noise_span_to_unique_sentinel(tokens, noise_mask, vocabulary):
  """Each noise span -> one sentinel (vocab_size-1, -2, ...); rest kept."""
  prev_is_noise = tf.pad(noise_mask[:-1], [[1, 0]])
  first_noise = tf.logical_and(noise_mask, tf.logical_not(prev_is_noise))
  subsequent_noise = tf.logical_and(noise_mask, prev_is_noise)
  sentinel = sentinel_id(vocabulary) + 1 - tf.cumsum(
      tf.cast(first_noise, tokens.dtype))
  tokens = tf.where(first_noise, sentinel, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(subsequent_noise))


def nonnoise_span_to_unique_sentinel(tokens, noise_mask, vocabulary):
  return noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask),
                                       vocabulary)


def _require_lengths(sequence_length, keys, objective):
  missing = [k for k in keys if not (sequence_length or {}).get(k)]
  if missing:
    raise ValueError(
        f'{objective} needs sequence_length with {", ".join(keys)} '
        f'(got {sequence_length}); pass task_feature_lengths to get_dataset.')


def denoise_spans(dataset, sequence_length, output_features,
                    noise_density=0.15, mean_noise_span_length=3.0):
  """T5 span corruption: concat, split to the helper's raw length, denoise.

  Follow with `seqio.preprocessors.append_eos_after_trim` (EOS on both
  sides). Raises if the targets length cannot hold the corrupted spans,
  naming the length that would.
  """
  _require_lengths(sequence_length, ('inputs', 'targets'), 'denoise_spans')
  inputs_length = sequence_length['inputs']
  tokens_length, targets_length = random_spans_helper(
      inputs_length, noise_density, mean_noise_span_length)
  if sequence_length['targets'] < targets_length:
    raise ValueError(
        f'targets length {sequence_length["targets"]} is too short for span '
        f'corruption with inputs length {inputs_length} (noise_density='
        f'{noise_density}, mean_noise_span_length={mean_noise_span_length}): '
        f'it needs targets >= {targets_length}; set '
        f'--config.task.feature_lengths.targets={targets_length}.')
  vocab = output_features['targets'].vocabulary

  @seqio.map_over_dataset(num_seeds=2)
  @graph_fn
  def _denoise(x, seeds):
    tokens = x['targets']
    mask = random_spans_noise_mask(tf.size(tokens), noise_density, seeds,
                                   mean_noise_span_length)
    return {'inputs': noise_span_to_unique_sentinel(tokens, mask, vocab),
            'targets': nonnoise_span_to_unique_sentinel(tokens, mask, vocab)}

  return _denoise(concat_and_split(dataset, tokens_length))


# ---- prefix split and fixed chunks -------------------------------------------------


def random_prefix_split(dataset, sequence_length, output_features):
  """Chunks of inputs_length-1 tokens split at a uniformly random point.

  inputs = the prefix, targets = the rest (at most targets_length-1 tokens,
  so nothing is trimmed once EOS is appended by append_eos_after_trim).
  With inputs_length <= targets_length this is T5's prefix_lm (split point
  uniform over the chunk).
  """
  del output_features
  _require_lengths(sequence_length, ('inputs', 'targets'),
                   'random_prefix_split')
  chunk = sequence_length['inputs'] - 1
  max_suffix = sequence_length['targets'] - 1

  @seqio.map_over_dataset(num_seeds=1)
  @graph_fn
  def _split(x, seed):
    tokens = x['targets']
    n = tf.size(tokens)
    low = tf.maximum(1, n - max_suffix)
    k = tf.random.stateless_uniform([], seed, minval=low, maxval=n,
                                    dtype=tf.int32)
    return {'inputs': tokens[:k], 'targets': tokens[k:]}

  return _split(concat_and_split(dataset, chunk, min_tokens=2))


def concat_and_chunk(dataset, sequence_length, output_features):
  """Full causal LM: EOS after every document, then fixed-length chunks."""
  _require_lengths(sequence_length, ('targets',), 'concat_and_chunk')
  eos = output_features['targets'].vocabulary.eos_id
  dataset = dataset.map(
      lambda x: {'targets': tf.concat([x['targets'], [eos]], 0)},
      num_parallel_calls=AUTOTUNE)
  return concat_and_split(dataset, sequence_length['targets'], min_tokens=2)


# ---- masked tokens (BERT, ELECTRA) -------------------------------------------------


def _select(length, rate, seed):
  """Bool [length]: exactly max(1, round(rate * length)) random positions."""
  num = tf.maximum(
      1, tf.cast(tf.round(tf.cast(length, tf.float32) * rate), tf.int32))
  order = tf.argsort(tf.random.stateless_uniform([length], seed))
  return tf.scatter_nd(order[:num, None], tf.ones([num], tf.int32),
                       [length]) > 0


def replace_selected(tokens, selected, seeds, mask_id, regular_ids,
                     mask_rate, random_rate):
  """BERT's corruption of the `selected` positions of `tokens` [n]: a
  `mask_rate` share become `mask_id`, a `random_rate` share a random id in
  [regular_ids), the rest stay. seeds: two stateless seeds."""
  n = tf.size(tokens)
  u = tf.random.stateless_uniform([n], seeds[0])
  random_ids = tf.random.stateless_uniform(
      [n], seeds[1], minval=regular_ids[0], maxval=regular_ids[1],
      dtype=tf.int32)
  inputs = tf.where(selected & (u < mask_rate), mask_id, tokens)
  return tf.where(selected & (u >= mask_rate) & (u < mask_rate + random_rate),
                  random_ids, inputs)


def mask_tokens(dataset, sequence_length, output_features, select_rate=0.15,
                mask_rate=0.8, random_rate=0.1):
  """A `select_rate` share of positions selected (loss_weights=1); of those
  `mask_rate` become [MASK], `random_rate` a random regular token, the rest
  stay. targets = the original tokens. BERT: 0.15 / 0.8 / 0.1; ELECTRA:
  0.15 / 0.85 / 0 (its generator samples replacements inside the model)."""
  _require_lengths(sequence_length, ('inputs',), 'mask_tokens')
  vocab = output_features['targets'].vocabulary
  mask, eos = vocabularies.mask_id(vocab), vocab.eos_id
  low, high = vocabularies.regular_id_range(vocab)

  @seqio.map_over_dataset(num_seeds=3)
  @graph_fn
  def _mask(x, seeds):
    tokens = x['targets']
    n = tf.size(tokens)
    selected = _select(n, select_rate, seeds[0])
    inputs = replace_selected(tokens, selected, seeds[1:], mask, (low, high),
                              mask_rate, random_rate)
    return {'inputs': tf.concat([inputs, [eos]], 0),
            'targets': tf.concat([tokens, [eos]], 0),
            'loss_weights': tf.concat([tf.cast(selected, tf.int32), [0]], 0)}

  # -1: room for the EOS, which is never selected.
  return _mask(concat_and_split(dataset, sequence_length['inputs'] - 1))




# ---- blank infilling (GLM) ---------------------------------------------------------------


def infilling_raw_length(total_length, noise_density=0.15, poisson_lambda=3.0):
  """Raw tokens per GLM example so that part A + part B usually fit.

  A + B = raw + 2 * spans (a [MASK] in A and an [S] in B per span); spans
  average noise_density * raw / lambda, and the 1.5 margin makes overflow
  (where trailing spans are left unmasked) rare.
  """
  return int(total_length / (1.0 + 1.5 * 2.0 * noise_density / poisson_lambda))


def blank_infilling(dataset, sequence_length, output_features,
                        noise_density=0.15, poisson_lambda=3.0):
  """GLM (Du et al. 2022) autoregressive blank infilling, one sequence.

  Spans with Poisson(lambda) lengths (at least 1) are drawn until they cover
  floor(noise_density * n) tokens (the last one is cut to fit), then laid
  out at random without touching. Output, all int32 [len <= targets length]:
    inputs          part A (spans -> [MASK]) ++ for each span in shuffled
                    order: [S] span tokens
    targets         0 on part A; on part B the span tokens then EOS
    loss_weights    1 on part B
    causal_attention  1 on part A (bidirectional), 0 on part B (causal)
    position_ids    part A: 0..|A|-1; part B: the position of its [MASK]
    block_position_ids  part A: 0; part B: 1..span length + 1
  """
  _require_lengths(sequence_length, ('targets',), 'blank_infilling')
  total = sequence_length['targets']
  raw = infilling_raw_length(total, noise_density, poisson_lambda)
  vocab = output_features['targets'].vocabulary
  mask, start, eos = (vocabularies.mask_id(vocab),
                      vocabularies.span_start_id(vocab), vocab.eos_id)

  @seqio.map_over_dataset(num_seeds=3)
  @graph_fn
  def _infill(x, seeds):
    tokens = x['targets']
    n = tf.size(tokens)
    # floor: spans cover at most noise_density of the tokens.
    num_noise = tf.cast(tf.floor(tf.cast(n, tf.float32) * noise_density),
                        tf.int32)
    num_noise = tf.minimum(tf.maximum(num_noise, 1), n - 1)
    # Span lengths: Poisson, at least 1, cut at the noise budget, and no
    # more spans than fit the row (each adds a [MASK] and an [S]).
    lengths = tf.maximum(tf.random.stateless_poisson(
        [num_noise], seeds[0], lam=poisson_lambda, dtype=tf.int32), 1)
    before = tf.cumsum(lengths, exclusive=True)
    lengths = tf.minimum(lengths, num_noise - before)[before < num_noise]
    lengths = lengths[:tf.maximum((total - n) // 2, 0)]
    k = tf.size(lengths)
    # Gaps between spans (>= 1 inside, >= 0 at the ends): stars and bars.
    free = n - tf.reduce_sum(lengths) - tf.maximum(k - 1, 0)
    bars = tf.sort(seqio.utils.stateless_shuffle(tf.range(free + k),
                                                 seeds[1])[:k])
    gaps = bars - tf.pad(bars[:-1] + 1, [[1, 0]])  # [k]
    gaps += tf.cast(tf.range(k) > 0, tf.int32)
    starts = tf.cumsum(gaps) + tf.cumsum(lengths, exclusive=True)  # [k]
    noise_idx = tf.ragged.range(starts, starts + lengths).flat_values
    noise = tf.scatter_nd(noise_idx[:, None], tf.ones_like(noise_idx),
                          [n]) > 0
    first = tf.scatter_nd(starts[:, None], tf.ones_like(starts), [n]) > 0
    keep = tf.logical_or(tf.logical_not(noise), first)
    part_a = tf.boolean_mask(tf.where(first, mask, tokens), keep)
    mask_pos = tf.gather(tf.cumsum(tf.cast(keep, tf.int32)) - 1, starts)
    # Part B: spans in random order, [S] before and EOS after each.
    order = tf.argsort(tf.random.stateless_uniform([k], seeds[2]))
    spans = tf.gather(tf.RaggedTensor.from_row_lengths(
        tf.gather(tokens, noise_idx), lengths), order)
    span_len = tf.gather(lengths, order)
    col = lambda v: tf.RaggedTensor.from_tensor(tf.fill([k, 1], v),
                                                 row_splits_dtype=tf.int32)
    b_in = tf.concat([col(start), spans], 1).flat_values
    b_tgt = tf.concat([spans, col(eos)], 1).flat_values
    len_a, len_b = tf.size(part_a), tf.size(b_in)
    zeros_a = tf.zeros([len_a], tf.int32)
    return {
        'inputs': tf.concat([part_a, b_in], 0),
        'targets': tf.concat([zeros_a, b_tgt], 0),
        'loss_weights': tf.concat([zeros_a, tf.ones([len_b], tf.int32)], 0),
        'causal_attention': tf.concat(
            [tf.ones([len_a], tf.int32), tf.zeros([len_b], tf.int32)], 0),
        'position_ids': tf.concat(
            [tf.range(len_a), tf.repeat(tf.gather(mask_pos, order),
                                        span_len + 1)], 0),
        'block_position_ids': tf.concat(
            [zeros_a, tf.ragged.range(1, span_len + 2).flat_values], 0),
    }

  return _infill(concat_and_split(dataset, raw, min_tokens=2))


# seqio's own step that ends a preprocessor chain with EOS (after trimming).
append_eos_after_trim = seqio.preprocessors.append_eos_after_trim
