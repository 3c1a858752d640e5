"""Multi-host start-up: one `jax.distributed.initialize` call, before any JAX.

Every host of a TPU pod, every task of a SLURM job and every local CPU process
runs the same command; this module decides how they find each other, in order:

1. `config.distributed` (coordinator_address, num_processes, process_id), or
2. the launcher's environment: T5X_LITE_COORDINATOR (host:port of process 0),
   T5X_LITE_NUM_PROCESSES, T5X_LITE_PROCESS_ID and optionally
   T5X_LITE_LOCAL_DEVICE_IDS ('0,1' restricts the GPUs a process drives); a
   missing process id is taken from SLURM_PROCID / JOB_COMPLETION_INDEX, so
   one `srun` line or one JobSet pod template serves every task;
3. JAX's own cluster detection (Cloud TPU VMs and GKE TPU pods, SLURM job
   steps and Open MPI jobs of more than one task): `jax.distributed.initialize()`
   with no arguments;
4. nothing: a single process needs no coordinator.

`initialize` must run before anything touches a JAX backend (train.py calls it
first thing): afterwards `jax.devices()` lists every host's devices.
"""
import dataclasses
import glob
import importlib.util
import os
from typing import Mapping, Optional, Tuple

ENV_COORDINATOR = 'T5X_LITE_COORDINATOR'
ENV_NUM_PROCESSES = 'T5X_LITE_NUM_PROCESSES'
ENV_PROCESS_ID = 'T5X_LITE_PROCESS_ID'
ENV_LOCAL_DEVICE_IDS = 'T5X_LITE_LOCAL_DEVICE_IDS'

# Per-task rank variables set by schedulers; used when the launcher exported
# the coordinator and process count once for all tasks.
_RANK_ENV_VARS = ('SLURM_PROCID', 'JOB_COMPLETION_INDEX', 'OMPI_COMM_WORLD_RANK')
# JAX's SLURM detection needs all of these (jax/_src/clusters/slurm_cluster.py).
_SLURM_STEP_VARS = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS',
                    'SLURM_PROCID', 'SLURM_LOCALID')
# Set on GKE TPU pods, multi-slice jobs and queued-resource TPU VMs.
_TPU_ENV_VARS = ('TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES',
                 'MEGASCALE_COORDINATOR_ADDRESS', 'TPU_WORKER_ID')


@dataclasses.dataclass(frozen=True)
class Plan:
  """How this process joins the others. mode: single | explicit | auto."""
  mode: str
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  local_device_ids: Optional[Tuple[int, ...]] = None
  source: str = ''  # where the settings came from, for the log line

  def initialize_kwargs(self) -> dict:
    """Arguments for `jax.distributed.initialize`."""
    if self.mode == 'auto':
      return ({} if self.local_device_ids is None else
              dict(local_device_ids=list(self.local_device_ids)))
    kw = dict(coordinator_address=self.coordinator_address,
              num_processes=self.num_processes, process_id=self.process_id)
    if self.local_device_ids is not None:
      kw['local_device_ids'] = list(self.local_device_ids)
    else:
      # Explicit settings are complete: without this, JAX's SLURM detection
      # would still pin each process to GPU SLURM_LOCALID, which is wrong for
      # one task per node driving all of its GPUs.
      kw['cluster_detection_method'] = 'deactivate'
    return kw


def _int_env(environ, name):
  raw = environ.get(name, '').strip()
  if not raw:
    return None
  try:
    return int(raw)
  except ValueError:
    raise ValueError(f'{name}={raw!r} must be an integer.') from None


def detect_cluster(environ: Optional[Mapping[str, str]] = None) -> str:
  """Names the managed cluster JAX can auto-configure: slurm|tpu|ompi or ''.

  Checked without starting a backend. A TPU VM is recognised by libtpu being
  installed next to TPU device files (v4/v5p: /dev/accel*, v5e/v6e:
  /dev/vfio/N) or by the worker variables GKE and multi-slice jobs set.
  """
  environ = os.environ if environ is None else environ
  # One SLURM or MPI task is one process: JAX's detection would pin it to a
  # single GPU (SLURM_LOCALID), hiding the others from `srun -n1 --gpus=8`.
  if all(v in environ for v in _SLURM_STEP_VARS) and (
      _int_env(environ, 'SLURM_NTASKS') or 0) > 1:
    return 'slurm'
  if 'OMPI_MCA_orte_hnp_uri' in environ and (
      _int_env(environ, 'OMPI_COMM_WORLD_SIZE') or 2) > 1:
    return 'ompi'
  if any(environ.get(v) for v in _TPU_ENV_VARS):
    return 'tpu'
  if environ is os.environ and (
      glob.glob('/dev/accel[0-9]*') or glob.glob('/dev/vfio/[0-9]*')) and (
          importlib.util.find_spec('libtpu') is not None):
    return 'tpu'
  return ''


def plan(dist_cfg=None, environ: Optional[Mapping[str, str]] = None) -> Plan:
  """Resolves config, environment and cluster into a `Plan` (no JAX calls)."""
  environ = os.environ if environ is None else environ
  coordinator, num, pid, source = '', None, None, []
  if dist_cfg is not None:
    coordinator = dist_cfg.get('coordinator_address', '') or ''
    num = dist_cfg.get('num_processes', 0) or None
    pid = dist_cfg.get('process_id', -1)
    pid = None if pid is None or pid < 0 else pid
    if coordinator or num or pid is not None:
      source.append('config.distributed')
  if not coordinator and environ.get(ENV_COORDINATOR):
    coordinator = environ[ENV_COORDINATOR].strip()
    source.append(ENV_COORDINATOR)
  if num is None and (num := _int_env(environ, ENV_NUM_PROCESSES)) is not None:
    source.append(ENV_NUM_PROCESSES)
  if pid is None and (pid := _int_env(environ, ENV_PROCESS_ID)) is not None:
    source.append(ENV_PROCESS_ID)
  local_ids = None
  if environ.get(ENV_LOCAL_DEVICE_IDS, '').strip():
    raw = environ[ENV_LOCAL_DEVICE_IDS]
    try:
      local_ids = tuple(int(x) for x in raw.split(',') if x.strip())
    except ValueError:
      raise ValueError(f'{ENV_LOCAL_DEVICE_IDS}={raw!r} must be a comma-'
                       'separated list of device ordinals, e.g. 0,1.') from None

  if coordinator or num is not None or pid is not None:
    if num == 1 and not coordinator:
      return Plan('single', source='num_processes=1')
    if pid is None:
      for var in _RANK_ENV_VARS:
        if (pid := _int_env(environ, var)) is not None:
          source.append(var)
          break
    missing = [name for name, v in (
        (f'coordinator ({ENV_COORDINATOR} or config.distributed.'
         'coordinator_address)', coordinator),
        (f'process count ({ENV_NUM_PROCESSES} or config.distributed.'
         'num_processes)', num),
        (f'process id ({ENV_PROCESS_ID} or config.distributed.process_id)',
         pid)) if v in (None, '')]
    if missing:
      raise ValueError(
          'Multi-process settings are incomplete: set the ' +
          ', '.join(missing) + ' as well, or none of them for one process.')
    if ':' not in coordinator:
      raise ValueError(f'coordinator address {coordinator!r} needs a port: '
                       'use host:port, e.g. 10.0.0.1:1234.')
    if not 0 <= pid < num:
      raise ValueError(f'process id {pid} is outside [0, {num}); ids run '
                       'from 0 to num_processes-1.')
    return Plan('explicit', coordinator, num, pid, local_ids,
                source=', '.join(source))

  cluster = detect_cluster(environ)
  if cluster:
    return Plan('auto', local_device_ids=local_ids, source=cluster)
  return Plan('single', source='no coordinator configured')


def initialize(config=None, environ: Optional[Mapping[str, str]] = None
               ) -> Plan:
  """Joins the other processes (or does nothing for one); call before JAX.

  Args:
    config: the run's ConfigDict (its `distributed` group is read) or None.
    environ: environment to read, os.environ by default.
  Returns:
    the `Plan` that was carried out.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  dist_cfg = None if config is None else config.get('distributed')
  p = plan(dist_cfg, environ)
  if p.mode == 'single':
    return p
  if jax.distributed.is_initialized():
    return p
  kwargs = p.initialize_kwargs()
  logging.info('jax.distributed.initialize(%s) from %s', kwargs, p.source)
  try:
    jax.distributed.initialize(**kwargs)
  except RuntimeError as e:
    if 'backend' in str(e).lower():
      raise RuntimeError(
          'jax.distributed.initialize ran after a JAX backend was started; '
          'call t5x_lite.distributed.initialize(config) before any other '
          'JAX call (jax.devices(), jnp arrays, jit).') from e
    raise
  logging.info('process %d of %d; %d local / %d global devices',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return p


# ---- per-host input sharding -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class HostShard:
  """The slice of the global batch this process feeds (seqio.ShardInfo's
  index/num_shards, plus the rows per host)."""
  index: int
  num_shards: int
  per_host_batch_size: int


def host_shard(global_batch_size: int, batch_sharding=None) -> HostShard:
  """Which input shard this process reads, and how many rows per step.

  Without a sharding every process reads its own 1/process_count of the
  data. With the batch's `jax.sharding.Sharding`, processes whose devices hold
  the same rows (e.g. tensor parallelism across hosts) share a shard, which is
  what `jax.make_array_from_process_local_data` expects.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if batch_sharding is None:
    count, index = jax.process_count(), jax.process_index()
    if global_batch_size % count:
      raise ValueError(
          f'train.batch_size={global_batch_size} is not divisible by the '
          f'{count} processes; use a multiple of {count}.')
    return HostShard(index, count, global_batch_size // count)
  # [process] -> the (start, stop) rows its devices hold, merged.
  rows = {}
  for device, idx in batch_sharding.devices_indices_map(
      (global_batch_size,)).items():
    start, stop, _ = idx[0].indices(global_batch_size)
    lo, hi = rows.get(device.process_index, (start, stop))
    rows[device.process_index] = (min(lo, start), max(hi, stop))
  ranges = sorted(set(rows.values()))
  mine = rows[jax.process_index()]
  size = mine[1] - mine[0]
  if any(hi - lo != size for lo, hi in ranges) or size * len(ranges) != (
      global_batch_size):
    raise ValueError(
        f'The batch sharding gives processes uneven or overlapping rows '
        f'{ranges}; use a mesh whose batch axes split evenly across hosts.')
  return HostShard(ranges.index(mine), len(ranges), size)
