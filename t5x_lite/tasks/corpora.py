"""Where the built corpora live, and the one error a missing build raises.

`python -m data.build` (or `make data`) writes every corpus and the
SentencePiece model under one data directory, then a `manifest.json` last, so
a directory with a manifest is a complete build. This module is the single
source of that layout for the builder (data/build.py) and the tasks; it
imports neither TensorFlow nor seqio.

    <data dir>/                          T5X_LITE_DATA_DIR, default <repo>/data/cache
      downloads/                         registry artifacts (sdist, wheel, .deb)
      shakespeare/{train,validation}.txt one paragraph per line
      next_line/{train,validation}.tsv   line <TAB> next line
      sentiment/{train,validation,test}.tsv      fresh|rotten <TAB> snippet
      translate_en_de/{train,validation,test}.tsv  English <TAB> German
      vocab/spm_unigram_4000.model       SentencePiece (pad 0, eos 1, unk 2)
      manifest.json                      sources, licences, example/token counts
      fortunes/{train,validation}.txt    on request only (--corpus=fortunes):
                                         one fortune cookie per line
"""
import json
import os

DATA_DIR_ENV = 'T5X_LITE_DATA_DIR'
BUILD_HINT = 'run `make data` (python -m data.build)'
# Bump when the layout or the cleaning changes: older builds are then rebuilt.
BUILD_VERSION = 1
MANIFEST = 'manifest.json'
VOCAB_FILE = os.path.join('vocab', 'spm_unigram_4000.model')
VOCAB_PIECES = 4000
VOCAB_EXTRA_IDS = 100

# corpus -> (file suffix, splits). translate_en_de is optional (Debian package).
CORPORA = {
    'shakespeare': ('txt', ('train', 'validation')),
    'next_line': ('tsv', ('train', 'validation')),
    'sentiment': ('tsv', ('train', 'validation', 'test')),
    'translate_en_de': ('tsv', ('train', 'validation', 'test')),
}
OPTIONAL_CORPORA = ('translate_en_de',)
# Built only on request (`python -m data.build --corpus=NAME`), never by
# `make data`: plain text for the README's "Your own data" walkthrough, which
# registers its own task on it (examples/my_tasks.py); each has a SOURCE.json
# (source, licence, counts) instead of a manifest entry.
ON_REQUEST = {'fortunes': ('txt', ('train', 'validation'))}
SOURCE_FILE = 'SOURCE.json'

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def data_dir() -> str:
  """The data directory: $T5X_LITE_DATA_DIR or <repo>/data/cache."""
  return os.environ.get(DATA_DIR_ENV) or os.path.join(_REPO_ROOT, 'data',
                                                       'cache')


def split_path(corpus: str, split: str, root: str = None) -> str:
  suffix, _ = CORPORA.get(corpus) or ON_REQUEST[corpus]
  return os.path.join(root or data_dir(), corpus, f'{split}.{suffix}')


def vocab_path(root: str = None) -> str:
  return os.path.join(root or data_dir(), VOCAB_FILE)


def manifest_path(root: str = None) -> str:
  return os.path.join(root or data_dir(), MANIFEST)


def read_manifest(root: str = None):
  """The build's manifest dict, or None when there is no complete build."""
  try:
    with open(manifest_path(root)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def is_built(corpus: str, root: str = None) -> bool:
  m = read_manifest(root)
  return bool(m) and corpus in m.get('corpora', {}) and all(
      os.path.exists(split_path(corpus, s, root)) for s in CORPORA[corpus][1])


def missing_message(what: str, root: str = None) -> str:
  return (f'{what} is not built in {root or data_dir()}: {BUILD_HINT}, '
          f'or point ${DATA_DIR_ENV} at a built data directory.')


def require(corpus: str) -> None:
  """Raises FileNotFoundError naming the fix when `corpus` is not built."""
  if not is_built(corpus):
    m = read_manifest()
    reason = (m or {}).get('unavailable', {}).get(corpus)
    if reason:
      raise FileNotFoundError(
          f'Corpus {corpus!r} was not available when the data was built '
          f'({reason}); rebuild with `python -m data.build --force`.')
    raise FileNotFoundError(missing_message(f'Corpus {corpus!r}'))


def num_examples(corpus: str):
  """{split: examples} from the manifest, or None before the build."""
  m = read_manifest()
  if not m or corpus not in m.get('corpora', {}):
    return None
  return {s: v['examples'] for s, v in m['corpora'][corpus]['splits'].items()}
