"""Installed like a library: the wheel ships the configs as t5x_lite.configs,
and from a directory outside the repository its console script trains on a
packaged config and on a user's config file that starts from ours.

The wheel is built from a copy of the sources (setup.py, t5x_lite/, configs/),
so nothing stale in the checkout's build/ can leak into it, and installed with
`pip install --no-deps --target`: the dependencies come from this venv
(PYTHONPATH=target), t5x_lite from the wheel alone. The subprocesses run
outside the repository and never see its t5x_lite/ or configs/.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

from t5x_lite import checkpoint_inspection
from t5x_lite import config as config_lib
from t5x_lite import configs
from t5x_lite import params_checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
DATA_DIR = os.environ.get('T5X_LITE_DATA_DIR') or os.path.join(
    ROOT, 'data', 'cache')
SHIPPED = sorted(os.path.basename(p)
                 for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))
# Two steps of local_tiny, shrunk to seconds: one set of values for the
# command line (packaged config) and for the user's config file, so the second
# run reuses the first one's compiled programs (persistent cache).
TINY = {
    'model.emb_dim': 32, 'model.num_heads': 2, 'model.head_dim': 16,
    'model.mlp_dim': 64, 'model.num_encoder_layers': 1,
    'model.num_decoder_layers': 1, 'task.feature_lengths.inputs': 32,
    'task.feature_lengths.targets': 8, 'train.batch_size': 8,
    'train.num_steps': 2, 'eval.every_steps': 2, 'eval.num_batches': 1,
    'checkpoint.every_steps': 2, 'task.shuffle_buffer_size': 128,
}
USER_CONFIG = textwrap.dedent('''\
    """A user's own config, outside the repository: it starts from ours."""
    from t5x_lite.configs import default
    from t5x_lite.configs import local_tiny

    TINY = {tiny!r}


    def get_config(arg=None):
      del arg
      c = local_tiny.get_config()
      assert c.keys() == default.get_config().keys()
      for key, value in TINY.items():
        *groups, leaf = key.split('.')
        node = c
        for g in groups:
          node = node[g]
        node[leaf] = value
      c.train.seed = 7  # the user's own choice, read back from config.json
      return c
''')


# ---- resolve_config_file: a config named as in the repo, from anywhere ----------


def test_resolve_config_file_finds_the_packaged_config(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ here
  packaged = os.path.join(os.path.dirname(configs.__file__), 'local_tiny.py')
  assert os.path.isfile(packaged)
  assert config_lib.resolve_config_file('configs/local_tiny.py') == packaged
  assert config_lib.resolve_config_file('./configs/local_tiny.py') == packaged
  assert config_lib.resolve_config_file('local_tiny.py') == packaged
  # config_flags' `:arg` (a model size) is kept.
  assert config_lib.resolve_config_file('configs/pretrain_t5.py:base') == (
      os.path.join(os.path.dirname(configs.__file__), 'pretrain_t5.py:base'))


def test_resolve_config_file_leaves_other_paths_alone(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  for path in ('configs/no_such.py', 'other/local_tiny.py', 'local_tiny',
               'configs/__init__.py', 'configs/no_such.py:base', ''):
    assert config_lib.resolve_config_file(path) == path
  # A file on disk wins over the packaged one of the same name.
  os.mkdir('configs')
  with open('configs/local_tiny.py', 'w') as f:
    f.write('def get_config(arg=None):\n  return None\n')
  assert config_lib.resolve_config_file('configs/local_tiny.py') == (
      'configs/local_tiny.py')
  assert config_lib.resolve_config_file('configs/local_tiny.py:x') == (
      'configs/local_tiny.py:x')


# ---- the wheel ------------------------------------------------------------------


def _copy_sources(dest):
  skip = shutil.ignore_patterns('__pycache__', '*.pyc')
  shutil.copy(os.path.join(ROOT, 'setup.py'), dest)
  for folder in ('t5x_lite', 'configs'):
    shutil.copytree(os.path.join(ROOT, folder), os.path.join(dest, folder),
                    ignore=skip)


def _run(cmd, **kw):
  return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
  """(wheel path, --target dir), built and installed once for the module."""
  base = tmp_path_factory.mktemp('install')
  src, wheels, target = base / 'src', base / 'wheels', base / 'target'
  src.mkdir()
  _copy_sources(str(src))
  # --no-build-isolation: this venv's setuptools builds it (offline, ~1 s).
  r = _run([PY, '-m', 'pip', 'wheel', '-q', '--no-deps',
            '--no-build-isolation', '-w', str(wheels), str(src)])
  assert r.returncode == 0, r.stderr
  (wheel,) = glob.glob(str(wheels / 't5x_lite-*.whl'))
  r = _run([PY, '-m', 'pip', 'install', '-q', '--no-deps', '--target',
            str(target), wheel])
  assert r.returncode == 0, r.stderr
  return wheel, str(target)


@pytest.mark.slow
def test_wheel_ships_the_configs_as_a_package(installed):
  wheel, _ = installed
  names = zipfile.ZipFile(wheel).namelist()
  assert sorted(n.split('/')[-1] for n in names
                if n.startswith('t5x_lite/configs/')) == SHIPPED
  assert not [n for n in names if n.startswith('configs/')]
  entry_points = [n for n in names if n.endswith('entry_points.txt')]
  text = zipfile.ZipFile(wheel).read(entry_points[0]).decode()
  for script in ('t5x-lite-train', 't5x-lite-eval', 't5x-lite-infer'):
    assert f'{script} = t5x_lite.' in text


def _env(target, cache):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(PYTHONPATH=target, JAX_PLATFORMS='cpu',
             T5X_LITE_DATA_DIR=DATA_DIR, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


def _assert_trained(workdir, emb_dim=32):
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  assert checkpoint_inspection.step_dirs(ckpt_dir).keys() == {2}
  assert checkpoint_inspection.inspect_step(os.path.join(ckpt_dir, '2')) is None
  params = params_checkpoints.restore_params(workdir)
  embedding = params['token_embedder']['embedding']
  assert embedding.shape == (4224, emb_dim)  # local_tiny's vocab, TINY's width
  with open(os.path.join(workdir, 'config.json')) as f:
    return json.load(f)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(DATA_DIR, 'manifest.json')),
                    reason='the shipped corpus is not built: run `make data`')
def test_console_script_trains_outside_the_repository(installed, tmp_path):
  _, target = installed
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  env = _env(target, str(tmp_path / 'jax_cache'))
  # The installed copy is the one that runs, configs included.
  r = _run([PY, '-c', 'import t5x_lite, t5x_lite.configs.default as d; '
            'print(t5x_lite.__file__); print(d.__file__)'],
           cwd=elsewhere, env=env)
  assert r.returncode == 0, r.stderr
  assert all(p.startswith(target) for p in r.stdout.split()), r.stdout
  script = os.path.join(target, 'bin', 't5x-lite-train')

  # 1. A packaged config, named as in the repository's README.
  workdir = str(tmp_path / 'packaged')
  r = _run([script, '--config=configs/local_tiny.py', f'--workdir={workdir}',
            *[f'--config.{k}={v}' for k, v in TINY.items()]],
           cwd=elsewhere, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert _assert_trained(workdir)['train']['seed'] == 0

  # 2. The user's own config file, starting from ours.
  (elsewhere / 'my_config.py').write_text(USER_CONFIG.format(tiny=TINY))
  workdir = str(tmp_path / 'user')
  r = _run([script, '--config=my_config.py', f'--workdir={workdir}'],
           cwd=elsewhere, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  saved = _assert_trained(workdir)
  assert saved['train']['seed'] == 7 and saved['model']['emb_dim'] == 32


# ---- a checkout used without any install ----------------------------------------

# This venv's editable install maps t5x_lite.configs to configs/; without it
# (a checkout on PYTHONPATH, no pip install) t5x_lite.config maps it itself.
_NO_INSTALL = textwrap.dedent('''\
    import sys
    sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in
                        getattr(f, '__module__', '')]
    from t5x_lite import config
    from t5x_lite.configs import local_tiny
    print(local_tiny.__file__)
    print(config.default_config().model.arch)
''')


@pytest.mark.slow
def test_a_source_checkout_on_pythonpath_imports_its_configs(tmp_path):
  src = tmp_path / 'checkout'
  src.mkdir()
  _copy_sources(str(src))
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(PYTHONPATH=str(src), JAX_PLATFORMS='cpu')
  r = _run([PY, '-c', _NO_INSTALL], cwd=tmp_path, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.split() == [str(src / 'configs' / 'local_tiny.py'),
                              'encoder_decoder']
