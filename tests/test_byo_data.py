"""Bring your own corpus, vocabulary and task (README "Your own data").

A small corpus is written into a temp dir (no download, no shipped data):
the vocabulary CLI trains on it; register_pretraining reads it as text
lines, TSV, JSONL and a glob of shards; the one-line errors (a JSONL record
without its key, missing data files, a vocabulary larger than the model, a
checkpoint embedding smaller than the task vocabulary) come from the real
entrypoints in subprocesses; and the whole path runs through the CLIs:
vocab -> train --task_module -> eval -> infer without --config, for span
corruption (encoder-decoder) and MLM (encoder-only).
"""
import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sentencepiece as spm

from t5x_lite import tasks
from t5x_lite import train_setup
from t5x_lite.config import ConfigError
from t5x_lite.config import default_config
from t5x_lite.tasks import sources
from t5x_lite.tasks import vocab as vocab_lib
from t5x_lite.tasks import vocabularies

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIECES = 190  # what this corpus supports (SentencePiece caps it at 195)
IDS = PIECES + 100  # + T5's sentinels
MODEL_VOCAB = 384  # IDS rounded up to a multiple of 128
_WORDS = (
    'the a cat dog bird fish tree river stone house garden window door road '
    'city village king queen child farmer sailor runs sleeps sings eats reads '
    'writes sees finds loses keeps opens closes under over near behind before '
    'after red green blue small large old young quiet loud happy tired bright '
    'dark morning evening night winter summer rain snow wind fire water bread '
    'milk').split()


def _docs(n, seed):
  r = random.Random(seed)
  return [' '.join(r.choice(_WORDS) for _ in range(r.randint(4, 14)))
          .capitalize() + '.' for _ in range(n)]


def _write(path, lines):
  with open(path, 'w', encoding='utf-8') as f:
    f.write(''.join(line + '\n' for line in lines))
  return str(path)


def _env():
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='2',
             XLA_FLAGS='')  # one CPU device: subprocess runs stay small
  env['PYTHONPATH'] = os.pathsep.join(
      [ROOT] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
  return env


def _run(args, cwd, timeout=600):
  return subprocess.run([sys.executable, '-m', *args], cwd=cwd, env=_env(),
                        capture_output=True, text=True, timeout=timeout,
                        check=False)


def _error_line(proc):
  lines = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert len(lines) == 1, proc.stderr[-3000:]
  return lines[0]


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """train/validation as lines, TSV, JSONL and two train shards, plus the
  vocabulary the CLI trains on the train lines."""
  d = tmp_path_factory.mktemp('byo')
  train, val = _docs(600, 0), _docs(40, 1)
  paths = dict(
      train=_write(d / 'train.txt', train),
      validation=_write(d / 'validation.txt', val),
      tsv=_write(d / 'train.tsv', [f'{i}\t{t}' for i, t in enumerate(train)]),
      jsonl=_write(d / 'train.jsonl', [json.dumps({'id': i, 'text': t})
                                       for i, t in enumerate(train)]),
      val_jsonl=_write(d / 'validation.jsonl',
                       [json.dumps({'text': t}) for t in val]),
      bad_jsonl=_write(d / 'bad.jsonl', [json.dumps({'text': 'fine'}),
                                         json.dumps({'body': 'x', 'id': 2})]))
  os.makedirs(d / 'shards')
  _write(d / 'shards' / 'part-0.txt', train[:300])
  _write(d / 'shards' / 'part-1.txt', train[300:])
  proc = _run(['t5x_lite.tasks.vocab', f'--input={d}/train.txt',
               f'--vocab_size={PIECES}', f'--out={d}/spm'], cwd=str(d))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(dir=str(d), docs=train, stdout=proc.stdout,
              model=str(d / 'spm.model'), **paths)


# ---- the vocabulary -------------------------------------------------------------------


def test_vocab_cli_follows_t5_conventions_and_prints_the_model_size(corpus):
  out = corpus['stdout'].splitlines()
  assert out[-1] == f'model.vocab_size={MODEL_VOCAB}', corpus['stdout']
  assert f'{IDS} ids' in out[1] and '600 lines of 1 file(s)' in out[0]
  sp = spm.SentencePieceProcessor(model_file=corpus['model'])
  assert sp.get_piece_size() == PIECES
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert [sp.id_to_piece(i) for i in range(3)] == ['<pad>', '</s>', '<unk>']
  vocab = vocabularies.vocabulary(corpus['model'])
  assert vocab.vocab_size == IDS and vocab.extra_ids == 100
  assert vocab.decode([IDS - 1]) == '<extra_id_0>'  # sentinels count down
  assert vocab.decode([PIECES]) == '<extra_id_99>'
  assert vocab.decode(vocab.encode('The cat sleeps.')) == 'The cat sleeps.'
  assert vocab_lib.model_vocab_size(PIECES) == MODEL_VOCAB


def test_vocab_cli_reads_jsonl_and_names_a_missing_key(corpus, tmp_path,
                                                       capsys):
  out = str(tmp_path / 'from_jsonl')
  assert vocab_lib.main([f'--input={corpus["jsonl"]}', '--input_format=jsonl',
                         f'--vocab_size={PIECES}', f'--out={out}']) == 0
  a = spm.SentencePieceProcessor(model_file=corpus['model'])
  b = spm.SentencePieceProcessor(model_file=out + '.model')
  # The same texts as the lines file: the same pieces.
  assert ([a.id_to_piece(i) for i in range(PIECES)] ==
          [b.id_to_piece(i) for i in range(PIECES)])
  capsys.readouterr()
  assert vocab_lib.main([f'--input={corpus["bad_jsonl"]}',
                         '--input_format=jsonl', '--vocab_size=50',
                         f'--out={out}']) == 2
  err = capsys.readouterr().err.strip()
  assert err == (f'error: {corpus["bad_jsonl"]}:2: no "text" key (its keys: '
                 'body, id); pass --text_key=<the text field>.')
  assert vocab_lib.main([f'--input={corpus["train"]}', '--vocab_size=5000',
                         f'--out={out}']) == 2
  assert 'Please set it to a value <= 195' in capsys.readouterr().err


# ---- register_pretraining over lines, TSV, JSONL, a glob ---------------------------


def _lm_config(name, length=32):
  c = default_config()
  c.task.name = name
  c.model.arch = 'decoder_only'
  c.task.feature_lengths.inputs = length // 2
  c.task.feature_lengths.targets = length // 2
  c.task.shuffle_buffer_size = 16
  return c


def _first_row(name):
  batch = next(tasks.get_dataset(_lm_config(name), 'train', batch_size=2,
                                 shuffle=False))
  return batch['decoder_target_tokens'][0]


@pytest.mark.parametrize('fmt', ['lines', 'tsv', 'jsonl', 'glob', 'dict'])
def test_register_pretraining_reads_every_source_kind(corpus, fmt):
  source = {
      'lines': corpus['train'],
      'tsv': corpus['tsv'],
      'jsonl': corpus['jsonl'],
      'glob': os.path.join(corpus['dir'], 'shards', 'part-*.txt'),
      'dict': {'train': [corpus['train']], 'validation': corpus['validation']},
  }[fmt]
  kw = {'field_names': ('id', 'text')} if fmt == 'tsv' else {}
  name = f'byo_causal_{fmt}'
  tasks.register_pretraining(name, source, 'causal_lm',
                             vocabulary=corpus['model'], **kw)
  assert tasks.objective_of(name) == 'causal_lm'
  row = _first_row(name)
  vocab = tasks.get_vocabulary(name)
  # Causal LM: documents with EOS after each, joined, cut into chunks; with
  # shuffle off the first chunk is the first documents of the first file
  # (the glob's part-0 holds the same first 300 lines).
  flat = [t for doc in corpus['docs'][:20] for t in vocab.encode(doc) + [1]]
  assert row.tolist() == flat[:len(row)]
  assert 0 not in row.tolist() and row.max() < PIECES  # a full chunk of pieces


def test_span_corruption_over_jsonl_uses_the_vocabulary_sentinels(corpus):
  tasks.register_pretraining('byo_span_jsonl', corpus['jsonl'],
                             'span_corruption', vocabulary=corpus['model'])
  c = default_config()
  c.task.name = 'byo_span_jsonl'
  c.task.feature_lengths.inputs, c.task.feature_lengths.targets = 64, 16
  c.task.shuffle_buffer_size = 16
  batch = next(tasks.get_dataset(c, 'train', batch_size=2))
  inputs = batch['encoder_input_tokens']
  targets = batch['decoder_target_tokens']
  assert inputs.shape == (2, 64) and targets.shape == (2, 16)
  # Every id is a piece or a sentinel of the 290-id vocabulary; both sides
  # start their masks with <extra_id_0> = 289.
  assert inputs.max() < IDS and targets.max() < IDS
  assert (IDS - 1) in inputs[0] and targets[0][0] == IDS - 1


def test_register_text_to_text_reads_jsonl_fields(corpus, tmp_path):
  pairs = [('Where does the cat sleep?', 'Under the tree.'),
           ('What does the king read?', 'Old bread.')]
  path = _write(tmp_path / 'qa.jsonl', [
      json.dumps({'q': q, 'a': a, 'id': i}) for i, (q, a) in enumerate(pairs)])
  tasks.register_text_to_text('byo_qa', {'train': path}, 'question: ',
                              input_key='q', target_key='a',
                              vocabulary=corpus['model'])
  c = default_config()
  c.task.name = 'byo_qa'
  c.task.pack = False
  c.task.feature_lengths.inputs, c.task.feature_lengths.targets = 32, 8
  batch = next(tasks.get_dataset(c, 'train', batch_size=2, shuffle=False))
  vocab = tasks.get_vocabulary('byo_qa')
  for row, (q, a) in enumerate(pairs):
    want_in = vocab.encode('question: ' + q) + [1]
    want_out = vocab.encode(a) + [1]
    got_in = batch['encoder_input_tokens'][row].tolist()
    got_out = batch['decoder_target_tokens'][row].tolist()
    assert got_in[:len(want_in)] == want_in and not any(got_in[len(want_in):])
    assert got_out[:len(want_out)] == want_out


def test_unknown_objective_is_one_line_listing_the_registered_ones(corpus):
  with pytest.raises(ConfigError) as e:
    tasks.register_pretraining('byo_bad', corpus['train'], 'span_corupt')
  assert "Unknown objective 'span_corupt'" in str(e.value)
  assert 'span_corruption' in str(e.value) and '\n' not in str(e.value)


# ---- the checks before anything compiles --------------------------------------------


def test_jsonl_record_without_the_key_names_file_line_and_key(corpus):
  tasks.register_pretraining('byo_bad_jsonl', corpus['bad_jsonl'], 'mlm',
                             vocabulary=corpus['model'])
  c = default_config()
  c.task.name = 'byo_bad_jsonl'
  c.model.arch = 'encoder_only'
  c.model.vocab_size = MODEL_VOCAB
  c.eval.num_batches = 0
  with pytest.raises(sources.DataError) as e:
    train_setup.check_task(c)
  assert str(e.value) == (
      f'{corpus["bad_jsonl"]}:2: no "text" key (its keys: body, id); name '
      'the field holding the text (text_key=, input_key=/target_key=) when '
      'registering the task.')


def test_missing_split_and_missing_files_are_one_line(corpus, tmp_path):
  tasks.register_pretraining('byo_train_only', corpus['train'], 'mlm',
                             vocabulary=corpus['model'])
  c = default_config()
  c.task.name = 'byo_train_only'
  c.model.arch = 'encoder_only'
  c.model.vocab_size = MODEL_VOCAB
  with pytest.raises(sources.DataError, match=(
      r"task 'byo_train_only' has no split 'validation' \(its splits: "
      r"train\): give its source a dict")):
    train_setup.check_task(c)
  c.eval.num_batches = 0  # trains without evaluating: the split is not needed
  train_setup.check_task(c)
  missing = str(tmp_path / 'nowhere' / '*.txt')
  tasks.register_pretraining('byo_missing', missing, 'mlm',
                             vocabulary=corpus['model'])
  c.task.name = 'byo_missing'
  with pytest.raises(sources.DataError) as e:
    train_setup.check_task(c)
  assert str(e.value) == (f"task 'byo_missing', split 'train': no file "
                          f'matches {missing}; fix the path in its source '
                          '(or build the data first).')
  tasks.register_pretraining('byo_no_vocab', corpus['train'], 'mlm',
                             vocabulary=str(tmp_path / 'none.model'))
  c.task.name = 'byo_no_vocab'
  with pytest.raises(sources.DataError, match=(
      r"task 'byo_no_vocab': The vocabulary .*none.model does not exist: "
      r'build it with `python -m t5x_lite.tasks.vocab')):
    train_setup.check_task(c)


# ---- through the entrypoints (subprocesses) ------------------------------------------


def _task_module(corpus, directory, name='byo_tasks'):
  """A user's task module, as examples/my_tasks.py is one."""
  d = corpus['dir']
  code = textwrap.dedent(f'''
      from t5x_lite import tasks
      VOCAB = {corpus["model"]!r}
      SPLITS = {{'train': {d + "/train.txt"!r},
                 'validation': {d + "/validation.txt"!r}}}
      tasks.register_pretraining('byo_span', SPLITS, 'span_corruption',
                                 vocabulary=VOCAB)
      tasks.register_pretraining('byo_mlm', SPLITS, 'mlm', vocabulary=VOCAB)
      tasks.register_pretraining(
          'byo_missing', {{'train': {d + "/absent/*.txt"!r}}},
          'span_corruption', vocabulary=VOCAB)
  ''')
  _write(os.path.join(directory, f'{name}.py'), [code])
  return name


TINY = ['--config.train.batch_size=4', '--config.eval.batch_size=4',
        '--config.eval.num_batches=1', '--config.eval.every_steps=3',
        '--config.checkpoint.every_steps=3', '--config.train.log_every_steps=1',
        '--config.task.shuffle_buffer_size=64']
SPAN = ['--config=configs/local_tiny.py', '--config.task.name=byo_span',
        '--config.task.feature_lengths.inputs=64',
        '--config.task.feature_lengths.targets=16',
        '--config.model.num_encoder_layers=1',
        '--config.model.num_decoder_layers=1', '--config.model.emb_dim=32',
        '--config.model.mlp_dim=64', '--config.model.num_heads=2',
        '--config.model.head_dim=16']


def _train(cwd, workdir, *extra, module='byo_tasks', steps=3):
  return _run(['t5x_lite.train', *SPAN, *TINY, f'--task_module={module}',
               f'--workdir={workdir}', f'--config.train.num_steps={steps}',
               *extra], cwd=cwd)


def test_vocab_larger_than_the_model_fails_before_compiling(corpus, tmp_path):
  module = _task_module(corpus, str(tmp_path))
  work = tmp_path / 'w'
  proc = _train(str(tmp_path), work, '--config.model.vocab_size=256')
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert _error_line(proc) == (
      "error: config: task 'byo_span' has a vocabulary of 290 ids (extra ids "
      'included) but model.vocab_size=256: set --config.model.vocab_size=384 '
      '(or give the task a smaller vocabulary).')
  assert not os.path.exists(work / 'checkpoints'), module


def test_missing_data_files_exit_2_before_anything_compiles(corpus, tmp_path):
  _task_module(corpus, str(tmp_path))
  work = tmp_path / 'w'
  proc = _train(str(tmp_path), work, '--config.task.name=byo_missing',
                '--config.eval.num_batches=0',
                f'--config.model.vocab_size={MODEL_VOCAB}')
  assert proc.returncode == 2, proc.stderr[-3000:]
  pattern = os.path.join(corpus['dir'], 'absent', '*.txt')
  assert _error_line(proc) == (
      f"error: config: task 'byo_missing', split 'train': no file matches "
      f'{pattern}; fix the path in its source (or build the data first).')
  assert not os.path.exists(work / 'checkpoints')
  assert 'Traceback' not in proc.stderr and 'NotFoundError' not in proc.stderr


@pytest.fixture(scope='module')
def span_run(corpus, tmp_path_factory):
  """vocab (the corpus fixture) -> train --task_module: 3 steps of span
  corruption on the user's corpus, one checkpoint."""
  cwd = str(tmp_path_factory.mktemp('span_cwd'))
  _task_module(corpus, cwd)
  work = os.path.join(cwd, 'work')
  proc = _train(cwd, work, f'--config.model.vocab_size={MODEL_VOCAB}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(cwd=cwd, work=work, proc=proc)


def _metrics(work):
  with open(os.path.join(work, 'metrics.jsonl')) as f:
    return [json.loads(l) for l in f if l.strip()]


def test_span_corruption_end_to_end_without_config_for_eval_and_infer(
    span_run):
  cwd, work = span_run['cwd'], span_run['work']
  assert sorted(os.listdir(os.path.join(work, 'checkpoints'))) == ['3']
  records = _metrics(work)
  train_losses = [r['loss'] for r in records if 'learning_rate' in r]
  assert len(train_losses) == 3 and all(np.isfinite(train_losses))
  # eval from the checkpoint alone: its saved config names the task module.
  ev = _run(['t5x_lite.eval', f'--workdir={work}'], cwd=cwd)
  assert ev.returncode == 0, ev.stderr[-3000:]
  with open(os.path.join(work, 'eval_results.json')) as f:
    results = json.load(f)
  assert results['task'] == 'byo_span' and results['step'] == 3
  assert np.isfinite(results['teacher_forced']['loss'])
  # infer from the checkpoint alone, on text with a sentinel to fill.
  inf = _run(['t5x_lite.infer', f'--checkpoint={work}/checkpoints',
              '--input=The cat <extra_id_0> the river.'], cwd=cwd)
  assert inf.returncode == 0, inf.stderr[-3000:]
  (record,) = [json.loads(l) for l in inf.stdout.splitlines()
               if l.startswith('{')]
  assert record['input'] == 'The cat <extra_id_0> the river.'
  assert isinstance(record['prediction'], str) and np.isfinite(
      record['score'])


def test_checkpoint_embedding_smaller_than_the_task_vocabulary(span_run):
  # The shipped corpus vocabulary has 4100 ids; this checkpoint embeds 384.
  proc = _run(['t5x_lite.eval', f'--workdir={span_run["work"]}',
               '--config.task.name=shakespeare_span_corruption'],
              cwd=span_run['cwd'])
  assert proc.returncode == 2, proc.stderr[-3000:]
  ckpt = os.path.join(span_run['work'], 'checkpoints', '3')
  assert _error_line(proc) == (
      f'error: config: checkpoint {ckpt} embeds 384 token ids but task '
      "'shakespeare_span_corruption' has a vocabulary of 4100 ids (extra ids "
      'included): ids past 383 cannot be embedded; use a task with the '
      'vocabulary the checkpoint was trained with, or start from a '
      'checkpoint whose embedding has at least that many rows.')


def test_mlm_end_to_end_through_the_clis(corpus, tmp_path):
  cwd = str(tmp_path)
  _task_module(corpus, cwd)
  work = os.path.join(cwd, 'work')
  proc = _run(['t5x_lite.train', '--config=configs/pretrain_bert.py:tiny',
               '--config.task.name=byo_mlm', *TINY,
               f'--config.model.vocab_size={MODEL_VOCAB}',
               '--config.task.feature_lengths.inputs=64',
               '--config.train.num_steps=3', '--config.optimizer.warmup_steps=1',
               '--task_module=byo_tasks',
               f'--workdir={work}'], cwd=cwd)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(work, 'checkpoints'))) == ['3']
  ev = _run(['t5x_lite.eval', f'--workdir={work}'], cwd=cwd)
  assert ev.returncode == 0, ev.stderr[-3000:]
  with open(os.path.join(work, 'eval_results.json')) as f:
    results = json.load(f)
  assert results['task'] == 'byo_mlm' and results['step'] == 3
  assert np.isfinite(results['teacher_forced']['loss'])
  assert 0 <= results['teacher_forced']['accuracy'] <= 1
  # An encoder-only model fills no text in: infer says so in one line.
  inf = _run(['t5x_lite.infer', f'--checkpoint={work}',
              '--input=The cat sleeps.'], cwd=cwd)
  assert inf.returncode == 2, inf.stderr[-3000:]
  assert _error_line(inf) == (
      "error: model.arch='encoder_only' cannot decode or score text; use an "
      'encoder_decoder or decoder_only checkpoint.')
