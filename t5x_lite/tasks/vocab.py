r"""A SentencePiece vocabulary from your own corpus, with T5's conventions.

    python -m t5x_lite.tasks.vocab --input='my/*.txt' --vocab_size=8000 \
        --out=my_vocab
    python -m t5x_lite.tasks.vocab --input=docs.jsonl --input_format=jsonl \
        --text_key=body --vocab_size=8000 --out=my_vocab

Writes my_vocab.model (and my_vocab.vocab, the pieces as text): pad 0, eos 1,
unk 2 and no bos, as T5's vocabularies; seqio adds 100 sentinels
(`<extra_id_0>` = the highest id, counting down) on top. The last line printed
is the `model.vocab_size` to train with: the ids with the sentinels, padded up
to a multiple of 128 (T5 pads 32100 to 32128; the padded rows are never
produced). A task takes the vocabulary as
`register_pretraining(..., vocabulary='my_vocab.model')`.

Plain Python and sentencepiece only (no TensorFlow, no seqio): data/build.py
loads this file by path and trains the shipped vocabulary with `train`.
"""
import argparse
import glob
import json
import os
import sys
import tempfile
from typing import List, Sequence

FORMATS = ('lines', 'jsonl')
EXTRA_IDS = 100  # T5's sentinels, added by seqio.SentencePieceVocabulary
PAD_TO = 128  # model.vocab_size is a multiple of this (TPU-friendly tiles)
# Sentences sampled for training when the corpus has more (SentencePiece's
# own reservoir sampling; a few million is what T5-size vocabularies use).
DEFAULT_SENTENCES = 1_000_000


class VocabError(ValueError):
  """A problem with the inputs or settings; the message names the fix."""


def model_vocab_size(pieces: int, extra_ids: int = EXTRA_IDS,
                     multiple: int = PAD_TO) -> int:
  """The `model.vocab_size` for `pieces` + `extra_ids` ids: rounded up to a
  multiple of `multiple`, so the embedding and logits tile evenly."""
  return -(-(pieces + extra_ids) // multiple) * multiple


def expand_inputs(patterns: Sequence[str]) -> List[str]:
  """Sorted files matching the globs; a pattern that matches nothing fails."""
  files = []
  for pattern in patterns:
    hits = sorted(glob.glob(os.path.expanduser(pattern)))
    hits = [h for h in hits if os.path.isfile(h)]
    if not hits:
      raise VocabError(f'--input={pattern} matches no file.')
    files.extend(h for h in hits if h not in files)
  return files


def jsonl_texts(path: str, text_key: str):
  """The `text_key` strings of a JSONL file, one line each (newlines in a
  text become spaces: SentencePiece reads one sentence per line)."""
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except ValueError as e:
        raise VocabError(f'{path}:{n}: not valid JSON ({e}).') from e
      if not isinstance(record, dict) or text_key not in record:
        keys = ', '.join(sorted(record)) if isinstance(record, dict) else '-'
        raise VocabError(f'{path}:{n}: no "{text_key}" key (its keys: '
                         f'{keys}); pass --text_key=<the text field>.')
      yield ' '.join(str(record[text_key]).split())


def _count_lines(files: Sequence[str]) -> int:
  total = 0
  for path in files:
    with open(path, 'rb') as f:
      total += sum(1 for line in f if line.strip())
  return total


def train(files: Sequence[str], out: str, vocab_size: int, *,
          model_type: str = 'unigram', character_coverage: float = 1.0,
          required_chars: str = '', input_sentence_size: int =
          DEFAULT_SENTENCES, max_sentence_length: int = 20000,
          seed: int = 0, quiet: bool = True) -> str:
  """Trains SentencePiece on text files (one sentence or document a line)
  with T5's special ids; returns the .model path (`out` + '.model').

  The same seed, files and settings give a byte-identical model.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  prefix = out[:-len('.model')] if out.endswith('.model') else out
  if os.path.dirname(prefix):
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
  spm.set_random_generator_seed(seed)
  options = dict(
      input=list(files),
      model_prefix=prefix,
      vocab_size=vocab_size,
      model_type=model_type,
      pad_id=0, eos_id=1, unk_id=2, bos_id=-1,  # T5: no BOS
      character_coverage=character_coverage,
      input_sentence_size=input_sentence_size,
      shuffle_input_sentence=True,
      max_sentence_length=max_sentence_length,
      num_threads=max(1, min(4, os.cpu_count() or 1)))
  if required_chars:
    options['required_chars'] = required_chars
  if quiet:
    # Warnings and errors only (its INFO log is hundreds of lines). Not
    # logstream=: that needs a real sys.stderr file descriptor (notebooks
    # and pytest's capsys have none). Not part of the model: same bytes.
    options['minloglevel'] = 2
  try:
    spm.SentencePieceTrainer.train(**options)
  except RuntimeError as e:
    # "Vocabulary size is too high (8000). Please set it to a value <= 5371."
    raise VocabError(f'SentencePiece: {" ".join(str(e).split())}') from e
  return prefix + '.model'


def build(patterns: Sequence[str], out: str, vocab_size: int, *,
          input_format: str = 'lines', text_key: str = 'text',
          **train_kw) -> dict:
  """Expands the globs, trains, and returns what the CLI reports:
  {'model', 'files', 'lines', 'pieces', 'ids', 'model_vocab_size'}."""
  if input_format not in FORMATS:
    raise VocabError(f'--input_format={input_format!r}: use one of '
                     f'{", ".join(FORMATS)}.')
  if vocab_size < 4:
    raise VocabError(f'--vocab_size={vocab_size}: use at least a few hundred.')
  files = expand_inputs(patterns)
  with tempfile.TemporaryDirectory() as tmp:
    inputs = files
    if input_format == 'jsonl':
      # SentencePiece reads text lines: the JSONL texts go to one temp file.
      inputs = [os.path.join(tmp, 'texts.txt')]
      with open(inputs[0], 'w', encoding='utf-8') as f:
        for path in files:
          for text in jsonl_texts(path, text_key):
            f.write(text + '\n')
    lines = _count_lines(inputs)
    if not lines:
      raise VocabError(f'--input {" ".join(patterns)}: no text to train on.')
    model = train(inputs, out, vocab_size, **train_kw)
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  pieces = spm.SentencePieceProcessor(model_file=model).get_piece_size()
  return dict(model=os.path.abspath(model), files=files, lines=lines,
              pieces=pieces, ids=pieces + EXTRA_IDS,
              model_vocab_size=model_vocab_size(pieces))


def _parser():
  p = argparse.ArgumentParser(
      prog='python -m t5x_lite.tasks.vocab',
      description='Trains a SentencePiece vocabulary with T5 conventions '
      '(pad 0, eos 1, unk 2, no bos; seqio adds 100 sentinels) and prints '
      'the model.vocab_size to use.')
  p.add_argument('--input', action='append', required=True,
                 help='a file or glob (repeatable): text lines or JSONL')
  p.add_argument('--input_format', default='lines', choices=FORMATS)
  p.add_argument('--text_key', default='text',
                 help='the JSONL field holding the text')
  p.add_argument('--vocab_size', type=int, required=True,
                 help='SentencePiece pieces (without the 100 sentinels)')
  p.add_argument('--out', required=True,
                 help='output prefix: writes PREFIX.model and PREFIX.vocab')
  p.add_argument('--model_type', default='unigram',
                 choices=('unigram', 'bpe', 'char', 'word'),
                 help='unigram is what T5 uses')
  p.add_argument('--character_coverage', type=float, default=1.0,
                 help='share of characters covered (0.9995 for CJK corpora)')
  p.add_argument('--input_sentence_size', type=int, default=DEFAULT_SENTENCES,
                 help='lines sampled for training when there are more')
  p.add_argument('--seed', type=int, default=0)
  return p


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    r = build(args.input, args.out, args.vocab_size,
              input_format=args.input_format, text_key=args.text_key,
              model_type=args.model_type,
              character_coverage=args.character_coverage,
              input_sentence_size=args.input_sentence_size, seed=args.seed)
  except VocabError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return 2
  print(f'vocab: wrote {r["model"]}: {r["pieces"]} pieces ({args.model_type};'
        f' pad 0, eos 1, unk 2, no bos) from {r["lines"]:,} lines of '
        f'{len(r["files"])} file(s)')
  print(f'vocab: + {EXTRA_IDS} sentinels (<extra_id_0> = {r["ids"] - 1} ... '
        f'<extra_id_{EXTRA_IDS - 1}> = {r["pieces"]}) = {r["ids"]} ids; a task '
        f'takes it with vocabulary={r["model"]!r}')
  print(f'vocab: train with --config.model.vocab_size={r["model_vocab_size"]} '
        f'({r["ids"]} padded up to a multiple of {PAD_TO})')
  print(f'model.vocab_size={r["model_vocab_size"]}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
