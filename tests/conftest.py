"""Test setup: 8 fake CPU devices, set before JAX starts, so every test can
build real multi-device meshes."""
import os
import sys

os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') +
    ' --xla_force_host_platform_device_count=8'
    # Tiny test models are compile-bound: LLVM's backend optimisations cost
    # ~30% of the suite's compile time and buy nothing at these sizes.
    ' --xla_backend_optimization_level=0').strip()
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# End-to-end modules (subprocesses, whole training runs, multi-process):
# `pytest -m "not slow"` (make test-fast) skips them for a quick inner loop;
# `make test` (and CI) runs everything. A single slow test elsewhere takes
# @pytest.mark.slow.
SLOW_MODULES = ('test_train_e2e.py', 'test_multiprocess.py', 'test_cli.py',
                'test_eval_infer.py', 'test_objectives_e2e.py',
                'test_bench.py', 'test_imports.py', 'test_hf_parity.py',
                'test_byo_data.py', 'test_hf_errors.py',
                'test_reliability.py')


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: end-to-end test; deselect with -m "not slow"')


def pytest_collection_modifyitems(config, items):
  del config
  import pytest  # pylint: disable=g-import-not-at-top
  for item in items:
    if os.path.basename(str(item.fspath)) in SLOW_MODULES:
      item.add_marker(pytest.mark.slow)
