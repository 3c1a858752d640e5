"""Inference: decode or score text with a checkpoint (behind infer.py).

    examples = inference.text_examples(config, ['summarize: ...'])
    examples = inference.file_examples(config, 'inputs.jsonl')
    examples = inference.task_examples(config, 'validation', num=4)
    records = inference.run(config, checkpoint, examples, mode='predict')

An example is {'input': text, 'input_ids': [...], and optionally 'target',
'target_ids'}. `run` batches them into the features config.model.arch takes
and returns one JSON-able record per example:
  predict: {'input', 'prediction', 'score' (log-likelihood of the decode, or
           the beam score), 'target' when known}
  score:   {'input', 'target', 'log_likelihood', 'num_target_tokens'}

Text is tokenized with the task's vocabulary (config.task.name) and gets EOS
appended like the task's own features. Inputs longer than
task.feature_lengths.inputs (targets: .targets) are truncated, keeping EOS.
A decoder-only model is given the input as its prompt (bidirectional for a
text-to-text task, i.e. a prefix LM; causal for a causal-LM task) and returns
its continuation; a causal-LM task split supplies the first half of each
example as the prompt.
"""
import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

from absl import logging
import numpy as np

from t5x_lite import batches as batches_lib
from t5x_lite.predictor import Predictor

Example = Dict[str, Any]
MODES = ('predict', 'score')


# ---- examples -------------------------------------------------------------------


def _task(config):
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  return tasks.get_task_or_mixture(config.task.name)


def _vocab(config):
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  return tasks.get_vocabulary(config.task.name)


def _adds_eos(config, key: str) -> bool:
  feature = _task(config).output_features.get(key)
  return bool(feature.add_eos) if feature is not None else False


def _encode(vocab, text: str, eos: bool) -> List[int]:
  ids = [int(i) for i in vocab.encode(text)]
  return ids + [vocab.eos_id] if eos else ids


def text_examples(config, inputs: Sequence[str],
                  targets: Optional[Sequence[str]] = None) -> List[Example]:
  """Examples from raw input texts (and targets, aligned), task-tokenized."""
  if targets and len(targets) != len(inputs):
    raise ValueError(f'{len(targets)} targets for {len(inputs)} inputs: give '
                     'one --targets per --input.')
  vocab = _vocab(config)
  # A causal-LM task has no 'inputs' feature: the prompt is a plain prefix
  # of the text, without EOS.
  in_eos = _adds_eos(config, 'inputs')
  out = []
  for i, text in enumerate(inputs):
    ex = {'input': text, 'input_ids': _encode(vocab, text, in_eos)}
    if targets:
      ex['target'] = targets[i]
      ex['target_ids'] = _encode(vocab, targets[i],
                                 _adds_eos(config, 'targets'))
    out.append(ex)
  return out


def file_examples(config, path: str) -> List[Example]:
  """Examples from a file: JSONL objects with 'input' (or 'inputs') and
  optionally 'target'/'targets', or plain text, one input per line."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--input_file {path} does not exist.')
  inputs, targets = [], []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      line = line.rstrip('\n')
      if not line.strip():
        continue
      if line.lstrip().startswith('{'):
        try:
          obj = json.loads(line)
        except ValueError as e:
          raise ValueError(f'{path}:{n}: not valid JSON ({e}).') from e
        text = obj.get('input', obj.get('inputs'))
        if text is None:
          raise ValueError(f'{path}:{n}: a JSONL line needs an "input" field.')
        inputs.append(str(text))
        target = obj.get('target', obj.get('targets'))
        targets.append(None if target is None else str(target))
      else:
        inputs.append(line)
        targets.append(None)
  have = [t is not None for t in targets]
  if any(have) and not all(have):
    raise ValueError(f'{path}: some lines have a target and some do not.')
  return text_examples(config, inputs, targets if all(have) else None)


def task_examples(config, split: str, num: int) -> List[Example]:
  """The first `num` preprocessed examples of config.task.name's `split`."""
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  tasks.check_data(config.task.name, [split])  # missing files: one line
  vocab = _vocab(config)
  ds = _task(config).get_dataset(
      sequence_length=tasks.task_feature_lengths(config), split=split,
      shuffle=False, num_epochs=1, seed=int(config.train.seed),
      use_cached=bool(config.task.use_cached))
  out = []
  for ex in ds.take(num).as_numpy_iterator():
    targets = [int(i) for i in ex['targets']]
    if 'inputs' in ex:
      inputs = [int(i) for i in ex['inputs']]
    else:  # causal LM: the first half prompts the second
      half = max(1, len(targets) // 2)
      inputs, targets = targets[:half], targets[half:]
    out.append({'input': vocab.decode(_strip_eos(inputs, vocab.eos_id)),
                'input_ids': inputs,
                'target': vocab.decode(_strip_eos(targets, vocab.eos_id)),
                'target_ids': targets})
  if not out:
    raise ValueError(f'Split {split!r} of {config.task.name!r} is empty.')
  return out


def _strip_eos(ids, eos_id):
  return [i for i in ids if i not in (0, eos_id)]


# ---- batches --------------------------------------------------------------------


def _fit(ids: Sequence[int], length: int, eos_id: int) -> List[int]:
  """Truncates to `length`, keeping a final EOS if there was one."""
  ids = list(ids)
  if len(ids) <= length:
    return ids
  return ids[:length - 1] + [eos_id] if ids[-1] == eos_id else ids[:length]


def _rows(seqs: Sequence[Sequence[int]], length: int) -> np.ndarray:
  out = np.zeros((len(seqs), length), np.int32)
  for r, s in enumerate(seqs):
    out[r, :len(s)] = s
  return out


def make_batch(arch: str, examples: Sequence[Example], config, eos_id: int,
               with_targets: bool) -> Dict[str, np.ndarray]:
  """Feature-converted numpy batch (seqio's converter layout, unpacked).

  encoder_decoder: encoder_input_tokens [n, inputs] (+ decoder targets).
  decoder_only: one sequence prompt + target of inputs + targets (predict:
  inputs + decoding.max_decode_length) tokens; decoder_causal_attention
  marks BOS and the prompt, loss weights the target.
  """
  lin = int(config.task.feature_lengths.inputs)
  lt = int(config.task.feature_lengths.targets)
  prompts = [_fit(ex['input_ids'], lin, eos_id) for ex in examples]
  targets = [_fit(ex.get('target_ids', []), lt, eos_id) for ex in examples]
  if arch == 'encoder_decoder':
    batch = {'encoder_input_tokens': _rows(prompts, lin)}
    if with_targets:
      tgt = _rows(targets, lt)
      batch.update(decoder_target_tokens=tgt,
                   decoder_input_tokens=np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
                   decoder_loss_weights=(tgt > 0).astype(np.int32))
    return batch
  if arch != 'decoder_only':
    raise ValueError(f'model.arch={arch!r} cannot decode or score text; use '
                     'an encoder_decoder or decoder_only checkpoint.')
  length = lin + (lt if with_targets else int(
      config.decoding.max_decode_length))
  full = [p + (t if with_targets else []) for p, t in zip(prompts, targets)]
  tgt = _rows(full, length)
  causal = np.zeros_like(tgt)
  weights = np.zeros_like(tgt)
  for r, p in enumerate(prompts):
    causal[r, :len(p) + 1] = 1  # BOS + prompt, seqio's PrefixLM layout
    weights[r, len(p):len(full[r])] = 1
  batch = {'decoder_input_tokens': np.pad(tgt, ((0, 0), (1, 0)))[:, :-1],
           'decoder_causal_attention': causal}
  if with_targets:
    batch.update(decoder_target_tokens=tgt, decoder_loss_weights=weights)
  return batch


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
  for i in range(0, len(items), size):
    yield items[i:i + size]


# ---- running -------------------------------------------------------------------


def _bidirectional_prompt(config) -> bool:
  """Whether a decoder-only model of config.task.name attends over its
  prompt bidirectionally (its task's batches have inputs and targets: a
  prefix LM) or causally (one sequence)."""
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  return tasks.layout_of(config.task.name) == 'inputs_targets'


def run(config, checkpoint: str, examples: Sequence[Example], *,
        mode: str = 'predict', batch_size: int = 8) -> List[Dict[str, Any]]:
  """Decodes (mode='predict') or scores (mode='score') `examples` with the
  params at `checkpoint`; one record per example, in order."""
  if mode not in MODES:
    raise ValueError(f'--mode={mode!r}: use one of {", ".join(MODES)}.')
  if mode == 'score' and any('target_ids' not in ex for ex in examples):
    raise ValueError('--mode=score needs a target per input: --targets=..., '
                     'JSONL "target" fields or --task_split.')
  predictor, info = Predictor.from_checkpoint(config, checkpoint)
  model = predictor.model
  logging.info('Loaded %s (step %d).', info['checkpoint'], info['step'])
  vocab = _vocab(config)
  eos = predictor.settings.eos_id
  # Batches padded to a multiple of the batch shards: one compile, and every
  # device gets rows.
  rows = batches_lib.round_up(max(1, min(batch_size, len(examples))),
                              predictor.num_shards)
  bidirectional = (_bidirectional_prompt(config)
                   if model.ARCH == 'decoder_only' else None)
  records = []
  for chunk in _chunks(list(examples), rows):
    batch = batches_lib.pad_rows(
        make_batch(model.ARCH, chunk, config, eos, mode == 'score'), rows)
    if mode == 'score':
      scores = predictor.score(batch)
      for i, ex in enumerate(chunk):
        records.append({'input': ex['input'], 'target': ex['target'],
                        'log_likelihood': float(scores[i]),
                        'num_target_tokens': int(
                            batch['decoder_loss_weights'][i].sum())})
      continue
    tokens, scores = predictor.predict(batch,
                                       bidirectional_prompt=bidirectional)
    for i, ex in enumerate(chunk):
      rec = {'input': ex['input']}
      if 'target' in ex:
        rec['target'] = ex['target']
      rec['prediction'] = vocab.decode(
          batches_lib.trim_decode(tokens[i], eos))
      rec['score'] = float(scores[i])
      records.append(rec)
  return records
