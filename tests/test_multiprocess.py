"""Two jax.distributed CPU processes on localhost, started by
launch/local_multiprocess.sh, behave like one process with the same global
batch: the same loss at every step, and a checkpoint that restores in a single
process to the same params.

Each process reads input shard i of 2 (`distributed.host_shard`) and the loop
assembles the global batch with `jax.make_array_from_process_local_data`. The
one-process reference reads the same two shards and concatenates them (a
stand-in for `tasks.get_dataset`, below), so both runs see identical global
batches; any difference would come from the multi-process path itself
(sharding of inputs, cross-process gradient reduction, multi-host Orbax).
"""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from t5x_lite import checkpoint_inspection
from t5x_lite import metrics as metrics_lib
from t5x_lite import params_checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHER = os.path.join(ROOT, 'launch', 'local_multiprocess.sh')
STEPS = 5
OVERRIDES = (
    'model.emb_dim=32', 'model.num_heads=2', 'model.head_dim=16',
    'model.mlp_dim=64', 'model.num_encoder_layers=1',
    'model.num_decoder_layers=1', 'task.feature_lengths.inputs=32',
    'task.feature_lengths.targets=8', 'train.batch_size=8',
    f'train.num_steps={STEPS}', 'train.log_every_steps=1',
    'eval.num_batches=0', 'checkpoint.every_steps=1000',
)
FLAGS = ['--config=configs/local_tiny.py'] + [f'--config.{o}'
                                              for o in OVERRIDES]
TOLERANCE = 1e-5

# One process, two devices, reading the input exactly as two processes do:
# shard i of 2 with half the rows each, concatenated in shard order.
_EMULATE_TWO_HOSTS = textwrap.dedent('''
    import numpy as np
    from t5x_lite import tasks, train
    one_host = tasks.get_dataset
    def get_dataset(config, split, *, batch_size, shard_id=0, num_shards=1,
                    **kw):
      assert (shard_id, num_shards) == (0, 1)
      shards = [one_host(config, split, batch_size=batch_size // 2,
                         shard_id=i, num_shards=2, **kw) for i in range(2)]
      for parts in zip(*shards):
        yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    tasks.get_dataset = get_dataset
    train.run_main()
''')

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(ROOT, 'data', 'cache', 'manifest.json'))
    and not os.environ.get('T5X_LITE_DATA_DIR'),
    reason='the shipped corpus is not built: run `make data`')


def _env(**extra):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('T5X_LITE_COORDINATOR', 'T5X_LITE_NUM',
                              'T5X_LITE_PROCESS', 'SLURM_'))}
  env.update(JAX_PLATFORMS='cpu', PYTHONPATH=ROOT, PYTHON=sys.executable,
             TF_CPP_MIN_LOG_LEVEL='2', XLA_FLAGS='')
  env.update(extra)
  return env


def _losses(workdir):
  return {r['step']: r['loss'] for r in metrics_lib.read_metrics(workdir)
          if 'loss' in r}


def _check(proc, what):
  assert proc.returncode == 0, f'{what} failed:\n{proc.stderr[-3000:]}'


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The 2-process run and its 1-process reference, side by side."""
  two = str(tmp_path_factory.mktemp('two_processes'))
  one = str(tmp_path_factory.mktemp('one_process'))
  launched = subprocess.Popen(
      ['bash', LAUNCHER, '2', '--devices_per_process=1', '--',
       f'--workdir={two}'] + FLAGS,
      cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  reference = subprocess.Popen(
      [sys.executable, '-c', _EMULATE_TWO_HOSTS, f'--workdir={one}'] + FLAGS,
      cwd=ROOT, env=_env(XLA_FLAGS='--xla_force_host_platform_device_count=2'),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  results = []
  for proc in (launched, reference):
    try:
      out, err = proc.communicate(timeout=420)
    except subprocess.TimeoutExpired:
      proc.kill()
      out, err = proc.communicate()
    results.append(subprocess.CompletedProcess(proc.args, proc.returncode,
                                               out, err))
  launched, reference = results
  logs = ''.join(
      open(os.path.join(two, 'logs', f'process_{i}.log')).read()[-2000:]
      for i in range(2) if os.path.exists(
          os.path.join(two, 'logs', f'process_{i}.log')))
  assert launched.returncode == 0, (
      f'2-process run failed:\n{launched.stderr}\n{logs}')
  _check(reference, '1-process reference')
  return dict(two=two, one=one, logs=logs)


def test_two_processes_joined_and_split_the_batch(runs):
  log0 = open(os.path.join(runs['two'], 'logs', 'process_0.log')).read()
  log1 = open(os.path.join(runs['two'], 'logs', 'process_1.log')).read()
  assert '2 processes; this one reads input shard 0/2 (4 rows per step)' in log0
  assert '2 processes; this one reads input shard 1/2 (4 rows per step)' in log1


def test_same_loss_at_every_step_as_one_process(runs):
  two, one = _losses(runs['two']), _losses(runs['one'])
  assert sorted(two) == sorted(one) == list(range(1, STEPS + 1))
  diffs = [abs(two[s] - one[s]) for s in sorted(two)]
  print(f'per-step |loss(2 processes) - loss(1 process)|: {diffs}')
  assert max(diffs) <= TOLERANCE, (two, one)
  # The model trains: not a constant that would match trivially.
  assert two[STEPS] < two[1]


def test_multiprocess_checkpoint_restores_in_one_process(runs):
  ckpt = os.path.join(runs['two'], 'checkpoints')
  assert sorted(checkpoint_inspection.step_dirs(ckpt)) == [STEPS]
  assert checkpoint_inspection.inspect_step(
      os.path.join(ckpt, str(STEPS))) is None
  data = checkpoint_inspection.read_json_item(
      os.path.join(ckpt, str(STEPS)), 'data')
  assert data['batches_consumed'] == {'0': STEPS, '1': STEPS}
  assert data['process_count'] == 2 and data['per_host_batch_size'] == 4
  # This pytest process is one process with 8 devices: a different topology.
  restored = params_checkpoints.restore_params(ckpt)
  reference = params_checkpoints.restore_params(os.path.join(runs['one'],
                                                      'checkpoints'))
  pairs = list(zip(jax.tree.leaves(restored), jax.tree.leaves(reference),
                   strict=True))
  worst = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in pairs)
  print(f'max |param(2 processes) - param(1 process)|: {worst}')
  assert worst <= TOLERANCE
  for a, b in pairs:
    assert a.shape == b.shape and a.dtype == b.dtype


# A direct check of the pieces the loop relies on, two devices per process.
_PROBE = textwrap.dedent('''
    import numpy as np
    from t5x_lite import distributed
    plan = distributed.initialize(None)
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()), ('data',))
    host = distributed.host_shard(8, NamedSharding(mesh, P('data')))
    rows = np.arange(8, dtype=np.float32)[
        host.index * host.per_host_batch_size:
        (host.index + 1) * host.per_host_batch_size]
    x = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P('data')), rows, (8,))
    total = jax.jit(lambda v: (v * v).sum(),
                    out_shardings=NamedSharding(mesh, P()))(x)
    print('RESULT', plan.mode, jax.process_index(), jax.process_count(),
          jax.device_count(), host.index, host.num_shards,
          host.per_host_batch_size, float(total))
''')


def test_distributed_initialize_and_host_shard(tmp_path):
  (tmp_path / 'probe.py').write_text(_PROBE)
  proc = subprocess.run(
      ['bash', LAUNCHER, '2', '--devices_per_process=2', '--module=probe',
       '--', f'--workdir={tmp_path}'],
      cwd=ROOT, env=_env(PYTHONPATH=f'{tmp_path}:{ROOT}'),
      capture_output=True, text=True, timeout=180)
  logs = [open(tmp_path / 'logs' / f'process_{i}.log').read()
          for i in range(2)]
  assert proc.returncode == 0, proc.stderr + '\n'.join(logs)
  results = [next(l for l in log.splitlines() if l.startswith('RESULT'))
             for log in logs]
  # 4 devices in all; each process feeds 4 of the 8 rows; sum of squares of
  # 0..7 = 140 needs both processes' rows.
  assert results == [f'RESULT explicit {i} 2 4 {i} 2 4 140.0'
                     for i in range(2)]
