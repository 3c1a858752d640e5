"""The objectives on synthetic token streams: exact lengths, statistics, and
round trips that rebuild the original tokens. Needs no built data: the
vocabulary is a 4100-id PassThroughVocabulary (the corpus vocab's size)."""
import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_lite.tasks import feature_converters
from t5x_lite.tasks import preprocessors as prep
from t5x_lite.tasks import vocabularies

VOCAB = seqio.PassThroughVocabulary(size=4100, eos_id=1)
FEATURES = {k: seqio.Feature(VOCAB) for k in ('inputs', 'targets')}
EOS = 1
MASK = vocabularies.mask_id(VOCAB)  # 4099
TOKEN_HIGH = 4000  # synthetic tokens stay below every sentinel/special id


def _docs(lengths, seed=0):
  rng = np.random.RandomState(seed)
  return [rng.randint(3, TOKEN_HIGH, size=n).astype(np.int32) for n in lengths]


def _run(fn, docs, sequence_length, seed=0):
  ds = tf.data.Dataset.from_generator(
      lambda: ({'targets': d} for d in docs),
      output_signature={'targets': tf.TensorSpec([None], tf.int32)})
  with seqio.map_seed_manager(seed):
    ds = fn(ds, sequence_length=sequence_length, output_features=FEATURES)
  return list(ds.as_numpy_iterator())


def _span_corruption(docs, lengths, seed=0):
  def chain(ds, sequence_length, output_features):
    ds = prep.denoise_spans(ds, sequence_length, output_features)
    return seqio.preprocessors.append_eos_after_trim(ds, output_features,
                                                     sequence_length)
  return _run(chain, docs, lengths, seed)


def _expected_chunks(docs, length, group=128):
  """What reduce_concat_tokens (128 docs) + split_tokens(length) yield."""
  out = []
  for i in range(0, len(docs), group):
    stream = np.concatenate(docs[i:i + group])
    out += [stream[j:j + length] for j in range(0, len(stream), length)]
  return out


def _fill_sentinels(inputs, targets):
  """Puts each sentinel's target span back in place of the sentinel."""
  spans, current = {}, None
  for t in targets:
    if t >= TOKEN_HIGH:
      current = t
      spans[current] = []
    else:
      spans[current].append(t)
  out = []
  for t in inputs:
    out.extend(spans[t] if t >= TOKEN_HIGH else [t])
  return np.array(out)


# ---- span corruption ----------------------------------------------------------------


def test_random_spans_helper_matches_t5():
  assert prep.random_spans_helper(512) == (568, 114)
  assert prep.random_spans_helper(128) == (141, 29)


def test_span_corruption_lengths_statistics_and_round_trip():
  docs = _docs([568] * 1000)  # 1000 docs of 568 tokens -> 1000 examples
  out = _span_corruption(docs, {'inputs': 512, 'targets': 114})
  assert len(out) == 1000
  noise = spans = total = 0
  for ex, raw in zip(out, docs):
    inputs, targets = ex['inputs'], ex['targets']
    assert len(inputs) == 512 and len(targets) == 114
    assert inputs[-1] == EOS and targets[-1] == EOS
    inputs, targets = inputs[:-1], targets[:-1]
    sentinels = targets[targets >= TOKEN_HIGH]
    # Sentinels count down from vocab_size - 1, same order on both sides.
    np.testing.assert_array_equal(sentinels, 4099 - np.arange(len(sentinels)))
    np.testing.assert_array_equal(inputs[inputs >= TOKEN_HIGH], sentinels)
    np.testing.assert_array_equal(_fill_sentinels(inputs, targets), raw)
    noise += int(np.sum(targets < TOKEN_HIGH))
    spans += len(sentinels)
    total += len(raw)
  noise_fraction, mean_span = noise / total, noise / spans
  print(f'span corruption: noise fraction {noise_fraction:.4f}, '
        f'mean span length {mean_span:.3f} over {len(out)} examples')
  assert abs(noise_fraction - 0.15) <= 0.01
  assert abs(mean_span - 3.0) <= 0.2


def test_span_corruption_round_trip_on_ragged_documents():
  docs = _docs(np.random.RandomState(1).randint(5, 400, size=300))
  out = _span_corruption(docs, {'inputs': 128, 'targets': 29}, seed=3)
  chunks = _expected_chunks(docs, 141)
  assert len(out) == len(chunks)
  for ex, raw in zip(out, chunks):
    assert len(ex['inputs']) <= 128 and len(ex['targets']) <= 29
    np.testing.assert_array_equal(
        _fill_sentinels(ex['inputs'][:-1], ex['targets'][:-1]), raw)


def test_span_corruption_is_deterministic_under_a_seed():
  docs = _docs([568] * 20)
  lengths = {'inputs': 512, 'targets': 114}
  a, b = _span_corruption(docs, lengths, 7), _span_corruption(docs, lengths, 7)
  c = _span_corruption(docs, lengths, 8)
  assert all(np.array_equal(x['inputs'], y['inputs']) for x, y in zip(a, b))
  assert not all(np.array_equal(x['inputs'], y['inputs'])
                 for x, y in zip(a, c))


def test_too_short_targets_names_the_length_that_fits():
  with pytest.raises(ValueError, match=r'needs targets >= 114'):
    _span_corruption(_docs([568]), {'inputs': 512, 'targets': 100})
  with pytest.raises(ValueError, match=r'feature_lengths.targets=29'):
    _span_corruption(_docs([200]), {'inputs': 128, 'targets': 16})


# ---- prefix LM, causal LM ----------------------------------------------------------


def test_prefix_lm_round_trip_and_lengths():
  docs = _docs(np.random.RandomState(2).randint(2, 300, size=200))
  lengths = {'inputs': 64, 'targets': 16}
  out = _run(lambda ds, **kw: seqio.preprocessors.append_eos_after_trim(
      prep.random_prefix_split(ds, **kw), kw['output_features'], kw['sequence_length']),
             docs, lengths, seed=5)
  chunks = [c for c in _expected_chunks(docs, 63) if len(c) >= 2]
  assert len(out) == len(chunks)
  for ex, raw in zip(out, chunks):
    assert ex['inputs'][-1] == EOS and ex['targets'][-1] == EOS
    assert 2 <= len(ex['inputs']) <= 64 and 2 <= len(ex['targets']) <= 16
    np.testing.assert_array_equal(
        np.concatenate([ex['inputs'][:-1], ex['targets'][:-1]]), raw)


def test_causal_lm_marks_document_ends_and_cuts_fixed_chunks():
  docs = _docs([10, 20, 30])
  out = _run(prep.concat_and_chunk, docs, {'targets': 16})
  stream = np.concatenate([np.append(d, EOS) for d in docs])  # 63 tokens
  np.testing.assert_array_equal(np.concatenate([x['targets'] for x in out]),
                                stream)
  assert [len(x['targets']) for x in out] == [16, 16, 16, 15]


# ---- BERT MLM and ELECTRA -------------------------------------------------------------


def _masking_stats(fn, seed=0):
  docs = _docs([127] * 1000)
  out = _run(fn, docs, {'inputs': 128, 'targets': 128}, seed)
  low, high = vocabularies.regular_id_range(VOCAB)
  sel = masked = randomized = kept = positions = 0
  for ex, raw in zip(out, docs):
    x, y, w = ex['inputs'], ex['targets'], ex['loss_weights'].astype(bool)
    assert len(x) == len(y) == len(w) == 128
    assert x[-1] == EOS and y[-1] == EOS and not w[-1]
    np.testing.assert_array_equal(y[:-1], raw)  # targets: the original
    np.testing.assert_array_equal(x[~w], y[~w])  # unselected: unchanged
    s = w[:-1]
    sel += s.sum()
    positions += len(raw)
    masked += np.sum(x[:-1][s] == MASK)
    kept += np.sum(x[:-1][s] == raw[s])
    changed = s & (x[:-1] != MASK) & (x[:-1] != raw)
    randomized += changed.sum()
    assert np.all((x[:-1][changed] >= low) & (x[:-1][changed] < high))
  return sel / positions, masked / sel, randomized / sel, kept / sel


def test_mlm_masks_15_percent_80_10_10():
  selected, masked, randomized, kept = _masking_stats(functools.partial(
      prep.mask_tokens, select_rate=0.15, mask_rate=0.8, random_rate=0.1))
  print(f'mlm: selected {selected:.4f}, [MASK] {masked:.4f}, random '
        f'{randomized:.4f}, kept {kept:.4f}')
  assert abs(selected - 0.15) <= 0.005
  assert abs(masked - 0.8) <= 0.015
  assert abs(randomized - 0.1) <= 0.01
  assert abs(kept - 0.1) <= 0.01


def test_electra_masks_15_percent_85_15():
  selected, masked, randomized, kept = _masking_stats(functools.partial(
      prep.mask_tokens, select_rate=0.15, mask_rate=0.85, random_rate=0.0))
  print(f'electra: selected {selected:.4f}, [MASK] {masked:.4f}, kept '
        f'{kept:.4f}')
  assert abs(selected - 0.15) <= 0.005
  assert abs(masked - 0.85) <= 0.015
  assert abs(kept - 0.15) <= 0.015
  assert randomized == 0


# ---- GLM ---------------------------------------------------------------------------------


def test_glm_round_trip_2d_positions_and_span_statistics():
  total = 160
  raw_len = prep.infilling_raw_length(total)
  docs = _docs([raw_len] * 300)
  out = _run(prep.blank_infilling, docs, {'targets': total}, seed=11)
  start = vocabularies.span_start_id(VOCAB)
  assert len(out) == 300
  covered = span_tokens = num_spans = 0
  for ex, raw in zip(out, docs):
    x, y = ex['inputs'], ex['targets']
    a = ex['causal_attention'].astype(bool)
    pos, blk, w = ex['position_ids'], ex['block_position_ids'], ex['loss_weights']
    assert len(x) <= total
    n_a = int(a.sum())
    assert a[:n_a].all() and not a[n_a:].any()  # part A, then part B
    np.testing.assert_array_equal(w, ~a)
    np.testing.assert_array_equal(pos[:n_a], np.arange(n_a))
    assert not blk[:n_a].any() and not y[:n_a].any()
    part_a, rebuilt = x[:n_a], list(x[:n_a])
    # Walk part B span by span: [S] t1..tn with targets t1..tn EOS.
    starts = np.flatnonzero(blk == 1)
    ends = list(starts[1:]) + [len(x)]
    fill = {}
    for s, e in zip(starts, ends):
      assert x[s] == start and y[e - 1] == EOS
      np.testing.assert_array_equal(blk[s:e], np.arange(1, e - s + 1))
      assert (pos[s:e] == pos[s]).all() and part_a[pos[s]] == MASK
      span = x[s + 1:e]
      np.testing.assert_array_equal(y[s:e - 1], span)
      fill[int(pos[s])] = list(span)
      span_tokens += len(span)
      num_spans += 1
    assert sorted(fill) == list(np.flatnonzero(part_a == MASK))
    rebuilt = [t for i, tok in enumerate(part_a)
               for t in (fill[i] if i in fill else [tok])]
    np.testing.assert_array_equal(rebuilt, raw)
    covered += sum(len(v) for v in fill.values()) / len(raw)
  coverage, mean_span = covered / len(out), span_tokens / num_spans
  print(f'glm: coverage {coverage:.4f}, mean span length {mean_span:.3f}')
  assert 0.14 <= coverage <= 0.15
  assert abs(mean_span - 3.0) <= 0.3


# ---- our feature converters keep zeros through seqio packing -----------------------------


def _from_examples(examples):
  keys = examples[0].keys()
  return tf.data.Dataset.from_generator(
      lambda: iter(examples),
      output_signature={k: tf.TensorSpec([None], tf.int32) for k in keys})


def test_masked_lm_converter_packs_loss_weights_intact():
  ex = [{'inputs': [MASK, 7, 8, 1], 'targets': [5, 7, 8, 1],
         'loss_weights': [1, 0, 0, 0]},
        {'inputs': [9, MASK, 1], 'targets': [9, 6, 1], 'loss_weights': [0, 1, 0]}]
  conv = feature_converters.MaskedTokensFeatureConverter(pack=True)
  out = next(conv(_from_examples(ex), {'inputs': 8, 'targets': 8})
             .as_numpy_iterator())
  np.testing.assert_array_equal(out['encoder_input_tokens'],
                                [MASK, 7, 8, 1, 9, MASK, 1, 0])
  np.testing.assert_array_equal(out['encoder_target_tokens'],
                                [5, 7, 8, 1, 9, 6, 1, 0])
  np.testing.assert_array_equal(out['encoder_loss_weights'],
                                [1, 0, 0, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(out['encoder_segment_ids'],
                                [1, 1, 1, 1, 2, 2, 2, 0])
  np.testing.assert_array_equal(out['encoder_positions'],
                                [0, 1, 2, 3, 0, 1, 2, 0])


def test_glm_converter_packs_2d_positions_intact():
  one = {'inputs': [10, MASK, 12, 4097, 11], 'targets': [0, 0, 0, 11, 1],
         'loss_weights': [0, 0, 0, 1, 1], 'causal_attention': [1, 1, 1, 0, 0],
         'position_ids': [0, 1, 2, 1, 1], 'block_position_ids': [0, 0, 0, 1, 2]}
  conv = feature_converters.BlankInfillingFeatureConverter(pack=True)
  out = next(conv(_from_examples([one, one]), {'targets': 12})
             .as_numpy_iterator())
  pad = [0, 0]
  np.testing.assert_array_equal(out['decoder_input_tokens'],
                                one['inputs'] * 2 + pad)
  np.testing.assert_array_equal(out['decoder_target_tokens'],
                                one['targets'] * 2 + pad)
  np.testing.assert_array_equal(out['decoder_causal_attention'],
                                one['causal_attention'] * 2 + pad)
  np.testing.assert_array_equal(out['decoder_positions'],
                                one['position_ids'] * 2 + pad)
  np.testing.assert_array_equal(out['decoder_block_positions'],
                                one['block_position_ids'] * 2 + pad)
  np.testing.assert_array_equal(out['decoder_segment_ids'],
                                [1] * 5 + [2] * 5 + pad)
