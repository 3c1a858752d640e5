"""Training throughput: one JSON line per (config, batch, remat) measurement.

    python bench/train_throughput.py --config=configs/pretrain_t5.py:base --batch=128
    python bench/train_throughput.py --config=configs/pretrain_t5.py:base --sweep \
        --sweep_batches=32,64,128 --sweep_remat=none,save_dots_no_batch,full
    python bench/train_throughput.py --config=configs/pretrain_t5.py:xl \
        --batch=128 --memory_plan   # XLA's buffer plan, nothing allocated
    python bench/train_throughput.py --config=configs/pretrain_t5.py:base \
        --packed=4 --profile_top=10  # packed rows; the step's top ops

Runs without TensorFlow or seqio: batches are synthetic tokens of the task's
feature lengths (the step's cost does not depend on their values). Each line
has config, batch, compile_s (process start to the first step done), step_s
(median of --steps timed steps after --warmup), tokens_per_s, mfu (matmul FLOPs
of t5x_lite/flops.py, the common T5 FLOPs formula, over the device's peak),
peak_mem_gb, packed (segments per row; 0: unpacked), cache_hits and
cache_misses (JAX's persistent compilation cache at config.compile.cache_dir:
a warm cache turns the misses into hits and shortens compile_s), jax, and
with --profile_top=N, top_ops (the step's N ops with the most device time).
import_s, init_s and first_step_s split compile_s; trace_s, lower_s and
backend_compile_s are JAX's own compile timers, summed over the process (a
cache hit's backend_compile_s is its read; compile_saved_s what it saved). A sweep runs every point in a fresh subprocess,
so compile times and memory peaks are each point's own; a point that runs
out of memory prints a line with "error" instead of stopping the sweep.
bench/gpu_check.sh runs the whole GPU check through this file
(bench/README.md).

XLA flags for GPUs are applied here (not on import of t5x_lite): see
GPU_XLA_FLAGS and the README's performance section.
"""
import time

_PROCESS_START = time.time()

# pylint: disable=g-import-not-at-top,wrong-import-position
import json
import os
import resource
import subprocess
import sys
import tempfile

# Flags XLA documents for H100 training throughput; set before JAX starts.
GPU_XLA_FLAGS = (
    '--xla_gpu_enable_latency_hiding_scheduler=true '
    '--xla_gpu_enable_highest_priority_async_stream=true')

if '--no_gpu_flags' not in sys.argv and 'XLA_FLAGS' not in os.environ:
  os.environ['XLA_FLAGS'] = GPU_XLA_FLAGS  # ignored by the CPU backend
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import cli
from t5x_lite import compile_cache
from t5x_lite import config as config_lib
from t5x_lite import lengths
from t5x_lite import objectives
from t5x_lite import optimizers
from t5x_lite import partitioning
from t5x_lite import run_config
from t5x_lite import trainer

_IMPORTED = time.time()

# --config: a missing, unparsable or raising file is one line, exit 2.
cli.define_flags('Config file.', config_required=True, task_modules=False)
_BATCH = flags.DEFINE_integer('batch', 0, 'Global batch (0: the config\'s).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps (median reported).')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after the first.')
_SWEEP = flags.DEFINE_bool('sweep', False, 'Sweep batches x remat policies.')
_SWEEP_BATCHES = flags.DEFINE_list('sweep_batches', ['32', '64', '128'],
                                   'Batches for --sweep.')
_SWEEP_REMAT = flags.DEFINE_list('sweep_remat',
                                 ['none', 'save_dots_no_batch', 'full'],
                                 'Remat policies for --sweep.')
_PEAK = flags.DEFINE_float('peak_tflops', 0.0,
                           'Peak dense TFLOP/s of one device (0: by kind).')
_OUTPUT = flags.DEFINE_string('output', '', 'Also append JSON lines here.')
_MEMORY_PLAN = flags.DEFINE_bool(
    'memory_plan', False,
    'Compile the step for abstract state and batch (nothing allocated) and '
    "report XLA's memory plan instead of timing: which sizes fit a device.")
flags.DEFINE_bool('no_gpu_flags', False, 'Do not set GPU_XLA_FLAGS.')
_PACKED = flags.DEFINE_integer(
    'packed', 0, 'Synthetic packed rows: this many segments per row (segment '
    'ids and positions, as seqio packing makes them); 0: unpacked rows.')
_PROFILE_TOP = flags.DEFINE_integer(
    'profile_top', 0, 'After timing, trace --profile_steps steps and report '
    'the N ops with the most device time (top_ops); 0: no profile.')
_PROFILE_STEPS = flags.DEFINE_integer('profile_steps', 3,
                                      'Steps traced for --profile_top.')

# JAX's persistent-cache events, counted so each line says whether its
# compiles were read back (a warm cache) or done.
_CACHE_EVENTS = {'/jax/compilation_cache/cache_hits': 0,
                 '/jax/compilation_cache/compile_requests_use_cache': 0}


def _count_cache_event(event, **kwargs):
  del kwargs
  if event in _CACHE_EVENTS:
    _CACHE_EVENTS[event] += 1


jax.monitoring.register_event_listener(_count_cache_event)

# Seconds JAX spent tracing, lowering and compiling (or reading back from the
# cache): the compile part of compile_s, whatever the device's step costs.
_DURATIONS = {'trace_s': '/jax/core/compile/jaxpr_trace_duration',
              'lower_s': '/jax/core/compile/jaxpr_to_mlir_module_duration',
              'backend_compile_s': '/jax/core/compile/backend_compile_duration',
              'compile_saved_s': '/jax/compilation_cache/compile_time_saved_sec'}
_SPENT = dict.fromkeys(_DURATIONS, 0.0)


def _add_duration(event, duration, **kwargs):
  del kwargs
  for key, name in _DURATIONS.items():
    if event == name:
      _SPENT[key] += duration


jax.monitoring.register_event_duration_secs_listener(_add_duration)

# Dense bf16 peaks per device (spec sheets); matmul-only MFU divides by these.
PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0, 'TPU v4': 275.0,
               'TPU v5p': 459.0, 'TPU v5 lite': 197.0, 'TPU v6 lite': 918.0}


def device_peak_flops():
  """(peak FLOP/s of one device, where the number came from)."""
  if _PEAK.value:
    return _PEAK.value * 1e12, 'flag'
  kind = jax.devices()[0].device_kind
  for name, tflops in PEAK_TFLOPS.items():
    if name.lower() in kind.lower():
      return tflops * 1e12, kind
  # CPU: cores x 2.5 GHz x 32 fp32 FLOP/cycle (two AVX2 FMA units): a nominal
  # figure so CPU lines carry an MFU too; not comparable with accelerators.
  cores = os.cpu_count() or 1
  return cores * 2.5e9 * 32 / jax.device_count(), 'cpu-nominal'


def _packing(length, segments):
  """(segment ids, positions) [length] of `segments` equal segments (the
  last one takes the remainder), as seqio's packing numbers them."""
  size = max(length // segments, 1)
  seg = np.minimum(np.arange(length) // size, segments - 1)
  start = np.searchsorted(seg, seg)  # each position's segment start
  return (seg + 1).astype(np.int32), (np.arange(length) - start).astype(
      np.int32)


def synthetic_batch(model, config, batch_size, seed=0, packed=0):
  """Random non-pad tokens in every feature; loss weights all ones.

  packed > 0: every row holds `packed` segments, with the
  {encoder,decoder}_segment_ids / _positions features of packed batches.
  """
  rng = np.random.default_rng(seed)
  vocab = config.model.vocab_size
  out = {}
  for name, sds in model.input_shapes(config.task.feature_lengths,
                                      batch_size).items():
    if name.endswith('loss_weights'):
      out[name] = np.ones(sds.shape, np.int32)
    elif name == 'classifier_labels':
      out[name] = rng.integers(0, config.model.num_classes, sds.shape,
                               dtype=np.int32)
    else:
      out[name] = rng.integers(2, vocab, sds.shape, dtype=np.int32)
  for stack in ('encoder', 'decoder'):
    tokens = out.get(f'{stack}_input_tokens')
    if packed and tokens is not None:
      seg, pos = _packing(tokens.shape[1], packed)
      out[f'{stack}_segment_ids'] = np.tile(seg, (batch_size, 1))
      out[f'{stack}_positions'] = np.tile(pos, (batch_size, 1))
  return out


def peak_memory_gb():
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**30, 'device'
  # CPU backends keep no device stats: the process's peak resident set.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 'host_rss'


def _setup(config):
  """(batch size, mesh, rules, batch sharding, model, optimizer, schedule)."""
  batch_size = _BATCH.value or config.train.batch_size
  config.train.batch_size = batch_size
  config_lib.validate(config)
  # Before anything compiles: JAX opens the cache at the first compile.
  compile_cache.enable(config.get('compile', {}).get('cache_dir', 'auto'))
  mesh = partitioning.make_mesh(config.mesh)
  rules = partitioning.logical_rules(config.mesh.rules)
  batch_sharding = partitioning.batch_sharding(mesh, rules)
  model = objectives.build_model(config)
  tx, schedule = optimizers.make_optimizer(
      run_config.OptimizerConfig.from_config(config))
  return batch_size, mesh, rules, batch_sharding, model, tx, schedule


def measure(config, config_name):
  """Runs one point in this process; returns its JSON-able dict."""
  batch_size, mesh, rules, batch_sharding, model, tx, schedule = _setup(
      config)
  t_setup = time.time()
  state, shardings = trainer.create_train_state(
      model, tx, mesh, rules, dict(config.task.feature_lengths),
      jax.random.PRNGKey(config.train.seed))
  jax.block_until_ready(state)
  t_init = time.time()
  step = trainer.make_train_step(
      model, tx, run_config.StepConfig.from_config(config), mesh, rules,
      shardings, batch_sharding, schedule=schedule)
  # Batches live on device before timing: the step alone is measured.
  batches = [partitioning.shard_batch(synthetic_batch(model, config,
                                                      batch_size, s,
                                                      _PACKED.value),
                                      batch_sharding) for s in range(2)]
  rng = jax.random.PRNGKey(1)

  t_first = time.time()
  state, metrics = step(state, batches[0], rng)
  jax.block_until_ready(metrics['loss'])
  compile_s = time.time() - _PROCESS_START
  # Where start-to-first-step goes: imports, the jitted init (its compile
  # included), the first step (its compile plus one step's run).
  startup = {'import_s': round(_IMPORTED - _PROCESS_START, 2),
             'init_s': round(t_init - t_setup, 2),
             'first_step_s': round(time.time() - t_first, 2)}
  for i in range(_WARMUP.value):
    state, metrics = step(state, batches[i % 2], rng)
  jax.block_until_ready(state)
  times = []
  for i in range(_STEPS.value):
    t = time.perf_counter()
    state, metrics = step(state, batches[i % 2], rng)
    jax.block_until_ready(metrics['loss'])
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  top = _profile(step, state, batches, rng) if _PROFILE_TOP.value else None

  lens = lengths.model_lengths(config.model.arch, config.task.feature_lengths)
  tokens = batch_size * sum(lens.values())
  step_flops = model.flops_per_step(config.task.feature_lengths, batch_size)
  peak, peak_source = device_peak_flops()
  mem_gb, mem_source = peak_memory_gb()
  return {
      'bench': 'train_throughput',
      'config': config_name,
      'size': config.model.size,
      'batch': batch_size,
      'remat': config.model.remat_policy,
      'dtype': config.model.dtype,
      'attention_impl': config.model.attention_impl,
      'compile_s': round(compile_s, 2),
      **startup,
      'step_s': round(step_s, 5),
      'tokens_per_s': round(tokens / step_s, 1),
      'model_tflops_per_step': round(step_flops / 1e12, 4),
      'mfu': round(step_flops / step_s / (peak * jax.device_count()), 4),
      'peak_source': peak_source,
      'peak_mem_gb': round(mem_gb, 3),
      'mem_source': mem_source,
      'loss': round(float(metrics['loss']), 4),
      'packed': _PACKED.value,
      **_cache_counts(),
      'devices': jax.device_count(),
      'device_kind': jax.devices()[0].device_kind,
      'platform': jax.default_backend(),
      'jax': jax.__version__,
      **({'top_ops': top} if top is not None else {}),
  }


def _cache_counts():
  requests = _CACHE_EVENTS['/jax/compilation_cache/compile_requests_use_cache']
  hits = _CACHE_EVENTS['/jax/compilation_cache/cache_hits']
  return {'cache_hits': hits, 'cache_misses': requests - hits,
          **{k: round(v, 2) for k, v in _SPENT.items()}}


def _profile(step, state, batches, rng):
  """top_ops of --profile_steps steps (bench/profile_top.py)."""
  import profile_top  # pylint: disable=import-outside-toplevel
  n = _PROFILE_STEPS.value
  with tempfile.TemporaryDirectory() as log_dir:
    with jax.profiler.trace(log_dir, create_perfetto_trace=True):
      for i in range(n):
        state, metrics = step(state, batches[i % 2], rng)
        jax.block_until_ready(metrics['loss'])
    return profile_top.top_ops(log_dir, n, _PROFILE_TOP.value)


def memory_plan(config, config_name):
  """XLA's buffer plan of one train step, for a config too big to run here.

  The step is lowered and compiled for ShapeDtypeStructs only, so a 11B
  model's plan costs a compile, not its memory. plan_gb = arguments (state,
  batch) + temporaries + outputs not aliased to donated arguments: what the
  device must hold at the step's peak. state_gb is exact (params and
  optimizer state bytes). The plan is the compiling backend's: on GPU it is
  the GPU's; on CPU it is an estimate (the CPU compiler upcasts some bf16
  work to f32, so it errs high).
  """
  batch_size, mesh, rules, batch_sharding, model, tx, schedule = _setup(
      config)
  abstract, shardings = trainer.abstract_train_state(
      model, tx, mesh, rules, dict(config.task.feature_lengths))
  step = trainer.make_train_step(
      model, tx, run_config.StepConfig.from_config(config), mesh, rules,
      shardings, batch_sharding, schedule=schedule)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding)
           for k, v in model.input_shapes(config.task.feature_lengths,
                                          batch_size).items()}
  t = time.time()
  compiled = step.lower(abstract, batch, jax.random.PRNGKey(0)).compile()
  compile_s = time.time() - t
  m = compiled.memory_analysis()
  gb = lambda n: round(n / 2**30, 3)
  state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(
      abstract))
  plan = (m.argument_size_in_bytes + m.temp_size_in_bytes +
          m.output_size_in_bytes - m.alias_size_in_bytes)
  return {
      'bench': 'memory_plan',
      'config': config_name,
      'size': config.model.size,
      'batch': batch_size,
      'remat': config.model.remat_policy,
      'dtype': config.model.dtype,
      'optimizer': config.optimizer.name,
      'params': int(sum(x.size for x in jax.tree.leaves(abstract.params))),
      'state_bytes': int(state_bytes),
      'state_gb': gb(state_bytes),
      'temp_gb': gb(m.temp_size_in_bytes),
      'plan_gb': gb(plan),
      'compile_s': round(compile_s, 1),
      'devices': jax.device_count(),
      'device_kind': jax.devices()[0].device_kind,
      'platform': jax.default_backend(),
  }


def emit(line):
  text = json.dumps(line)
  print(text, flush=True)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'a') as f:
      f.write(text + '\n')


def sweep(argv):
  """One subprocess per point: its own compile time and memory peak.

  argv: the full command line (sys.argv), flags included.
  """
  passthrough = [a for a in argv[1:] if not a.startswith(
      ('--sweep', '--batch=', '--output=', '--config.model.remat_policy='))]
  for remat in _SWEEP_REMAT.value:
    for batch in _SWEEP_BATCHES.value:
      cmd = [sys.executable, os.path.abspath(__file__), *passthrough,
             f'--batch={batch}', f'--config.model.remat_policy={remat}']
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
      lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
      if proc.returncode == 0 and lines:
        emit(json.loads(lines[-1]))
      else:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['']
        emit({'bench': 'train_throughput', 'config': _config_name(argv),
              'batch': int(batch), 'remat': remat, 'error': tail[0][:300]})


def _config_name(argv):
  for a in argv:
    if a.startswith('--config='):
      return a.split('=', 1)[1]
  return ''


def main(argv):
  del argv  # absl strips flags from it; the sweep re-passes sys.argv's
  if _SWEEP.value:
    sweep(sys.argv)
    return
  run = memory_plan if _MEMORY_PLAN.value else measure
  emit(run(cli.load_config(), _config_name(sys.argv)))


if __name__ == '__main__':
  cli.run(main)
