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
