"""TensorFlow and seqio stay inside t5x_lite/tasks/ (the project design).

Every other module must import on a host without them (a GPU box training
from synthetic or pre-tokenized batches), so importing all of them in a
fresh interpreter must leave both out of sys.modules.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# absl entrypoints define the same flags (--config, ...): one process each.
ENTRYPOINTS = ('t5x_lite.train', 't5x_lite.eval', 't5x_lite.infer')


def _modules_outside_tasks():
  names = []
  pkg = os.path.join(ROOT, 't5x_lite')
  for d, dirs, files in os.walk(pkg):
    dirs[:] = [x for x in dirs if x not in ('tasks', '__pycache__')]
    rel = os.path.relpath(d, ROOT).replace(os.sep, '.')
    names += [rel if f == '__init__.py' else f'{rel}.{f[:-3]}'
              for f in files if f.endswith('.py')]
  return sorted(names)


def _imported(names):
  code = ('import importlib, sys\n'
          f'for n in {names!r}: importlib.import_module(n)\n'
          "print(sorted(m for m in ('tensorflow', 'seqio') if m in sys.modules))")
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc.stdout.strip().splitlines()[-1]


def test_no_tensorflow_or_seqio_outside_tasks():
  names = _modules_outside_tasks()
  assert {'t5x_lite.evaluation', 't5x_lite.loop', 't5x_lite.interop.hf',
          *ENTRYPOINTS} <= set(names), names
  libraries = [n for n in names if n not in ENTRYPOINTS]
  assert _imported(libraries) == '[]'
  for entrypoint in ENTRYPOINTS:
    assert _imported([entrypoint]) == '[]', entrypoint
