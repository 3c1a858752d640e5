"""The command line train, eval, infer and the benchmark share (t5x_lite/cli.py).

Real subprocesses of the real entrypoints:
  * a config file that is missing, does not parse or raises: one line, exit 2,
    for train, eval, infer and bench/train_throughput.py;
  * --task_module: a module that does not import is one exact line (exit 2);
    one that registers a text-lines task over a temp corpus trains with
    configs/local_tiny.py, and its name is saved with the run's config;
  * eval and infer without --config run from that workdir's checkpoint alone
    (the task module imported from the saved config), overrides included;
  * the console: no CUDA/TPU probing and no Orbax INFO lines unless
    --verbose_libraries;
  * launch scripts pass --task_module through (--dry-run).
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from t5x_lite import cli
from t5x_lite import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
BENCH = os.path.join(ROOT, 'bench', 'train_throughput.py')
STEPS = 4
TINY = ('model.emb_dim=32', 'model.num_heads=2', 'model.head_dim=16',
        'model.mlp_dim=64', 'model.num_encoder_layers=1',
        'model.num_decoder_layers=1', 'task.feature_lengths.inputs=32',
        'task.feature_lengths.targets=8', 'train.batch_size=8',
        f'train.num_steps={STEPS}', 'train.log_every_steps=2',
        f'eval.every_steps={STEPS}', 'eval.num_batches=1',
        f'checkpoint.every_steps={STEPS}', 'eval.num_decode_examples=2',
        'eval.max_examples=4', 'task.shuffle_buffer_size=64')
# What the console must not show by default (issue 14): TensorFlow's CUDA
# probing and C++ start-up lines, JAX's TPU probing.
PROBING = re.compile(r'cuInit|cudart_stub|libtpu|backend .tpu.|oneDNN|'
                     r'absl::InitializeLog|cpu_feature_guard')

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, 'data', 'cache', 'manifest.json'))
    and not os.environ.get('T5X_LITE_DATA_DIR'),
    reason='the shipped corpus (its vocabulary) is not built: run `make data`')


def _env():
  # No TF_CPP_MIN_LOG_LEVEL from the caller: the entrypoints set what they
  # need themselves (a user runs them without the Makefile's environment).
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  env.update(JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  return env


def _run(args, cwd, timeout=420):
  return subprocess.run(args, cwd=cwd, env=_env(), timeout=timeout,
                        capture_output=True, text=True)


def _entry(name):
  return [PY, '-m', f't5x_lite.{name}']


def _one_error_line(proc) -> str:
  """The run failed with exit 2, no traceback, and its last stderr line is
  the one error line."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == errors[0]
  return errors[0]


# ---- config files that do not load -----------------------------------------------

_BAD_CONFIGS = {
    'syntax.py': 'from t5x_lite.configs import default\n\n'
                 'def get_config(arg=None:\n  return default.get_config()\n',
    'raising.py': 'def get_config(arg=None):\n'
                  '  raise RuntimeError("no such size: " + str(arg))\n',
}
_ENTRYPOINTS = {
    'train': _entry('train') + ['--workdir=w'],
    'eval': _entry('eval') + ['--workdir=w'],
    'infer': _entry('infer') + ['--checkpoint=w', '--input=x'],
    'bench': [PY, BENCH],
}


@pytest.fixture(scope='module')
def bad_configs(tmp_path_factory):
  d = tmp_path_factory.mktemp('bad_configs')
  for name, text in _BAD_CONFIGS.items():
    (d / name).write_text(text)
  return str(d)


_CASES = {
    'missing': ('missing.py',
                'error: --config missing.py: no such file (relative to '),
    'syntax': ('syntax.py',
               'error: --config syntax.py:3: SyntaxError: invalid syntax'),
    'raising': ('raising.py:xl', 'error: --config raising.py: RuntimeError: '
                'no such size: xl (at raising.py:2)'),
}


# Every case on train; one each on the others (the same cli code loads the
# file for all four, and each subprocess costs seconds of imports).
@pytest.mark.parametrize('entrypoint, case', [
    ('train', 'missing'), ('train', 'syntax'), ('train', 'raising'),
    ('eval', 'syntax'), ('infer', 'raising'), ('bench', 'missing')])
def test_config_file_errors_are_one_line(bad_configs, entrypoint, case):
  spec, expect = _CASES[case]
  proc = _run(_ENTRYPOINTS[entrypoint] + [f'--config={spec}'], bad_configs)
  line = _one_error_line(proc)
  assert line.startswith(expect), line
  # Nothing was started: no workdir made.
  assert not os.path.exists(os.path.join(bad_configs, 'w'))


def test_missing_config_file_lists_the_packaged_configs(bad_configs):
  proc = _run(_entry('train') + ['--workdir=w', '--config=local_tiny.pyy'],
              bad_configs)
  line = _one_error_line(proc)
  assert 'Packaged configs: ' in line and 'configs/local_tiny.py' in line
  assert 'configs/models.py' not in line  # a size table, not a config


# ---- task modules ---------------------------------------------------------------------


def test_missing_task_module_is_one_exact_line(tmp_path):
  proc = _run(_entry('train') + ['--config=configs/local_tiny.py',
                                 f'--workdir={tmp_path / "w"}',
                                 '--task_module=my_tasks'], str(tmp_path))
  assert _one_error_line(proc) == (
      "error: --task_module my_tasks: ModuleNotFoundError: No module named "
      "'my_tasks'")
  assert not os.path.exists(tmp_path / 'w')


def test_task_module_that_raises_names_its_line(tmp_path):
  (tmp_path / 'broken_tasks.py').write_text(
      'import t5x_lite.tasks\n\nraise ValueError("vocab missing")\n')
  proc = _run(_entry('infer') + ['--config=configs/local_tiny.py',
                                 '--checkpoint=nowhere', '--input=x',
                                 '--task_module=broken_tasks'], str(tmp_path))
  assert _one_error_line(proc) == (
      'error: --task_module broken_tasks: ValueError: vocab missing (at '
      'broken_tasks.py:3)')


_TASK_MODULE = '''
"""A user's task module: span corruption over plain text lines."""
import seqio
import t5x_lite.tasks

t5x_lite.tasks.register_pretraining(
    'my_lines_span',
    seqio.TextLineDataSource({{'train': {train!r},
                              'validation': {validation!r}}}),
    'span_corruption')
'''


@pytest.fixture(scope='module')
def user_run(tmp_path_factory):
  """configs/local_tiny.py, shrunk, on a temp corpus through --task_module,
  run from the directory that holds my_tasks.py (as T5X users do)."""
  d = tmp_path_factory.mktemp('user_run')
  words = ('the quick brown fox jumps over a lazy dog while seven wizards '
           'box and quickly judge jovial zebras').split()
  for split, n in (('train', 400), ('validation', 40)):
    lines = [' '.join(words[(i + j) % len(words)] for j in range(12 + i % 9))
             for i in range(n)]
    (d / f'{split}.txt').write_text('\n'.join(lines) + '\n')
  (d / 'my_tasks.py').write_text(_TASK_MODULE.format(
      train=str(d / 'train.txt'), validation=str(d / 'validation.txt')))
  workdir = str(d / 'run')
  proc = _run(_entry('train') + [
      '--config=configs/local_tiny.py', f'--workdir={workdir}',
      '--task_module=my_tasks', '--config.task.name=my_lines_span',
      *[f'--config.{o}' for o in TINY]], str(d))
  assert proc.returncode == 0, proc.stderr[-4000:]
  return dict(dir=str(d), workdir=workdir, proc=proc)


def test_train_with_task_module_saves_its_name(user_run):
  with open(os.path.join(user_run['workdir'], 'config.json')) as f:
    saved = json.load(f)
  assert saved['task']['name'] == 'my_lines_span'
  assert saved['task']['modules'] == ['my_tasks']
  assert os.path.isdir(os.path.join(user_run['workdir'], 'checkpoints',
                                    str(STEPS)))
  records = [json.loads(l) for l in open(
      os.path.join(user_run['workdir'], 'metrics.jsonl'))]
  assert max(r['step'] for r in records if 'loss' in r) == STEPS


def _orbax_info_lines(text):
  """absl INFO lines logged from Orbax's modules."""
  import orbax.checkpoint  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(orbax.checkpoint.__file__))
  ours = {os.path.basename(p) for p in glob.glob(
      os.path.join(ROOT, 't5x_lite', '**', '*.py'), recursive=True)}
  names = {os.path.basename(p) for p in glob.glob(
      os.path.join(root, '**', '*.py'), recursive=True)} - ours
  return [l for l in text.splitlines()
          if re.match(r'I\d{4} ', l) and
          (m := re.search(r' (\S+\.py):\d+\] ', l)) and m.group(1) in names]


def test_train_console_is_quiet(user_run):
  out = user_run['proc'].stdout + user_run['proc'].stderr
  assert not [l for l in out.splitlines() if PROBING.search(l)], out[-4000:]
  assert not _orbax_info_lines(out), _orbax_info_lines(out)[:5]
  # What a person wants to see is still there.
  assert f'eval step {STEPS}: loss' in out
  assert 'validation loss: first' in out
  assert f'step {STEPS}/{STEPS}' in out


def test_eval_without_config_uses_the_checkpoint(user_run):
  # The console script, not `python -m`: the current directory must be
  # importable for the saved task.modules all the same.
  script = os.path.join(os.path.dirname(PY), 't5x-lite-eval')
  cmd = [script] if os.path.exists(script) else _entry('eval')
  proc = _run(cmd + [f'--workdir={user_run["workdir"]}',
                     '--config.eval.num_decode_examples=1'], user_run['dir'])
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(os.path.join(user_run['workdir'], 'eval_results.json')) as f:
    results = json.load(f)
  assert results['task'] == 'my_lines_span'
  assert results['step'] == STEPS
  assert len(results['samples']) == 1  # the override; the saved config says 2
  assert results['teacher_forced']['batches'] == 1  # from the saved config
  assert set(results['samples'][0]['input'].split()) & {
      'fox', 'dog', 'zebras', 'wizards'}, results['samples']
  assert not _orbax_info_lines(proc.stderr)


def test_infer_without_config_and_with_overrides(user_run):
  ckpt = os.path.join(user_run['workdir'], 'checkpoints')
  base = _entry('infer') + [f'--checkpoint={ckpt}', '--task_split=validation',
                            '--num_examples=2']
  proc = _run(base, user_run['dir'])
  assert proc.returncode == 0, proc.stderr[-4000:]
  records = [json.loads(l) for l in proc.stdout.splitlines()]
  assert len(records) == 2
  assert all(set(r['input'].split()) & {'fox', 'dog', 'zebras', 'wizards'}
             for r in records), records
  assert not [l for l in proc.stderr.splitlines() if PROBING.search(l)]
  assert not _orbax_info_lines(proc.stderr)

  # An override applies to the saved config: another task's inputs.
  proc = _run(base + ['--config.task.name=shakespeare_span_corruption',
                      '--verbose_libraries'], user_run['dir'])
  assert proc.returncode == 0, proc.stderr[-4000:]
  records = [json.loads(l) for l in proc.stdout.splitlines()]
  assert 'CAESAR' in records[0]['input'], records[0]
  # --verbose_libraries brings the libraries' lines back.
  assert _orbax_info_lines(proc.stderr)

  # The same one-line errors as with --config.
  for override, expect in (
      ('--config.decoding.max_decode_lenght=4',
       'error: unknown config override --config.decoding.max_decode_lenght: '
       "decoding has no key 'max_decode_lenght'. Did you mean "
       "'max_decode_length'? Every key is listed in configs/default.py."),
      ('--config.decoding.max_decode_length=eight',
       'error: flag --config.decoding.max_decode_length=eight: invalid '
       "literal for int() with base 10: 'eight'"),
      ('--config.decoding.method=bream',
       "error: config: decoding.method='bream' is not one of greedy, sample, "
       "beam. Did you mean 'beam'?")):
    assert _one_error_line(_run(base + [override], user_run['dir'])) == expect


def test_infer_from_an_hf_import_without_config(user_run, tmp_path):
  """A params-only HF import holds the model's config; the task is named on
  the command line (the import knows nothing of it)."""
  hf_dir, imported = str(tmp_path / 'hf'), str(tmp_path / 'imported')
  for args in (['export', f'--checkpoint={user_run["workdir"]}',
                f'--out={hf_dir}'],
               ['import', f'--hf_dir={hf_dir}', f'--out={imported}']):
    proc = _run([PY, '-m', 't5x_lite.interop.hf', *args], user_run['dir'])
    assert proc.returncode == 0, proc.stderr[-3000:]
  proc = _run(_entry('infer') + [
      f'--checkpoint={imported}', '--task_module=my_tasks',
      '--config.task.name=my_lines_span', '--task_split=validation',
      '--num_examples=1', '--config.decoding.max_decode_length=8'],
      user_run['dir'])
  assert proc.returncode == 0, proc.stderr[-3000:]
  (record,) = [json.loads(l) for l in proc.stdout.splitlines()]
  assert set(record['input'].split()) & {'fox', 'dog', 'zebras', 'wizards'}
  assert isinstance(record['prediction'], str) and record['score'] < 0


def test_checkpoint_without_a_saved_config(user_run, tmp_path):
  step = os.path.join(tmp_path, 'copy', 'checkpoints', str(STEPS))
  shutil.copytree(os.path.join(user_run['workdir'], 'checkpoints', str(STEPS)),
                  step)
  shutil.rmtree(os.path.join(step, 'config'))
  proc = _run(_entry('infer') + [f'--checkpoint={step}', '--input=x'],
              user_run['dir'])
  assert _one_error_line(proc) == (
      f'error: {step} holds no saved config (no config item, no config.json '
      'beside it); pass --config=FILE, the config it was trained with.')


# ---- pieces, in process ------------------------------------------------------------------


def test_split_overrides_keeps_the_rest_in_order():
  rest, overrides = cli.split_overrides(
      ['prog', '--workdir=w', '--config.a.b=1', '--config.c', '2',
       '--noconfig.d', '--config=f.py', '--', '--config.e=3'])
  assert rest == ['prog', '--workdir=w', '--config=f.py', '--', '--config.e=3']
  assert overrides == ['--config.a.b=1', '--config.c', '2', '--noconfig.d']


def test_saved_config_round_trips_but_not_the_mesh():
  from t5x_lite.configs import local_tiny  # pylint: disable=g-import-not-at-top
  c = local_tiny.get_config()
  c.task.modules = ('my_tasks',)
  c.mesh.fsdp = 8  # the training pod's, not this machine's
  c.task.feature_lengths = {'targets': 64}  # a decoder-only task's lengths
  saved = json.loads(c.to_json_best_effort())
  back = cli.config_from_saved(saved, 'here')
  assert back.mesh.fsdp == 1 and back.mesh.rules == c.mesh.rules
  assert dict(back.task.feature_lengths) == {'targets': 64}
  c.mesh.fsdp = 1
  assert back.to_dict() == c.to_dict()
  config_lib.validate(cli.apply_overrides(back, []), num_devices=1)


# ---- launch scripts ---------------------------------------------------------------------


@pytest.mark.parametrize('cmd', [
    ['launch/local_multiprocess.sh', '2', '--dry-run', '--',
     '--config=configs/local_tiny.py', '--workdir=/tmp/mp',
     '--task_module=my_tasks'],
    ['launch/tpu_pod.sh', 'v4-32', 'configs/pretrain_t5.py:base',
     '--workdir=gs://b/r', '--dry-run', '--', '--task_module=my_tasks'],
    ['launch/slurm_gpu.sbatch', 'configs/pretrain_t5.py:base',
     '--workdir=/shared/w', '--dry-run', '--', '--task_module=my_tasks'],
])
def test_launchers_pass_task_module_through(cmd):
  env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'HOME': '/tmp',
         'PYTHON': PY, 'TMPDIR': '/tmp', 'GPUS_PER_NODE': '2'}
  proc = subprocess.run(['bash', *cmd], cwd=ROOT, env=env, timeout=60,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  train_lines = [l for l in proc.stdout.splitlines() if 't5x_lite.train' in l]
  assert train_lines and all('--task_module=my_tasks' in l
                             for l in train_lines), proc.stdout


# An abandoned coroutine that raises while it is finalised: what Orbax's
# reads leave behind after a failed restore (a traceback and a TensorStore
# spec on stderr, whenever the garbage collector gets to it).
_IGNORED_IN_COROUTINE = textwrap.dedent('''
    import gc, sys
    from t5x_lite import cli
    if sys.argv[1] == 'quiet':
      cli.quiet_libraries(verbose=False)
    class Pending:
      def __await__(self):
        yield 1
    async def read():
      try:
        await Pending()
      finally:
        raise RuntimeError('TensorStore({\\n  "driver": "zarr"\\n})')
    c = read()
    c.send(None)
    del c
    gc.collect()
''')


@pytest.mark.parametrize('mode', ['quiet', 'verbose'])
def test_ignored_coroutine_errors_stay_off_the_console(mode):
  run = subprocess.run([PY, '-c', _IGNORED_IN_COROUTINE, mode], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
  assert run.returncode == 0, run.stderr
  if mode == 'quiet':
    assert run.stderr == ''
  else:  # Python's own hook: the traceback and the spec, line by line
    assert 'Exception ignored in: <coroutine object' in run.stderr
    assert '"driver": "zarr"' in run.stderr
