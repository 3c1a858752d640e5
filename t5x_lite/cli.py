r"""The command line that train, eval and infer share, in one place.

    from t5x_lite import cli  # first: it sets library log levels before
                              # TensorFlow or JAX load
    cli.define_flags('Config file ...', config_required=True)

    def main(argv):
      cli.no_positional_args(argv)
      config = cli.load_config()   # --config FILE[:ARG] + --config.a.b=v
      cli.prepare(config)          # task modules, compile cache
      ...

    if __name__ == '__main__':
      cli.run(main)

Flags: --config=FILE[:ARG] (a path, or a config that ships with the package:
configs/local_tiny.py works from any directory), --config.a.b=v overrides
(typed by ml_collections.config_flags, so a typo or a bad value is one line),
--task_module=MODULE (repeatable; also config key task.modules; the current
directory is importable, as with T5X's MIXTURE_OR_TASK_MODULE) and
--verbose_libraries. eval and infer may leave --config out: then
`load_config(saved=...)` starts from the config saved with the checkpoint and
applies the same overrides to it.

Every mistake a user can make here (a config file that is missing, does not
parse or raises; an unknown key; a task module that does not import) is one
line on stderr, `error: ...`, and exit status 2.

A quiet console: TensorFlow's CUDA probing and C++ start-up lines, JAX's TPU
backend probing and the INFO chatter of Orbax, seqio, TensorFlow and JAX are
left out; their warnings and errors stay. --verbose_libraries shows
everything.
"""
import contextlib
import importlib
import importlib.util
import logging as py_logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags


def _verbose_requested(argv: Sequence[str]) -> bool:
  """--verbose_libraries, read from sys.argv before absl parses it: the
  environment below must be set before TensorFlow's C++ library loads."""
  verbose = False
  for arg in argv:
    if arg in ('--verbose_libraries', '-verbose_libraries'):
      verbose = True
    elif arg in ('--noverbose_libraries', '-noverbose_libraries'):
      verbose = False
    elif arg.startswith(('--verbose_libraries=', '-verbose_libraries=')):
      verbose = arg.split('=', 1)[1].lower() in ('1', 'true', 't', 'yes', 'y')
  return verbose


_VERBOSE = _verbose_requested(sys.argv)
if not _VERBOSE:
  # TensorFlow's C++ INFO/WARNING lines (dataset cache notes, CPU feature
  # guards); read when its library loads, so it is set at this import. A value
  # the user exported wins.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

# pylint: disable=g-import-not-at-top,wrong-import-position
from t5x_lite import config as config_lib

FLAGS = flags.FLAGS

# ---- failing in one line ---------------------------------------------------------


def fail(message: Any, status: int = 2):
  """One line on stderr, `error: ...`, then exit `status` (2: a usage
  error, 1: a failure)."""
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr,
        flush=True)
  sys.exit(status)


def _where(error: BaseException) -> str:
  """' (at FILE:LINE)' of the innermost frame that raised `error`."""
  frames = [f for f in traceback.extract_tb(error.__traceback__)
            if not f.filename.startswith('<frozen')]
  if not frames:
    return ''
  path = frames[-1].filename
  if os.path.isabs(path) and not os.path.relpath(path).startswith('..'):
    path = os.path.relpath(path)
  return f' (at {path}:{frames[-1].lineno})'


def _describe(error: BaseException, where: str = '') -> str:
  """'FILE:LINE: SyntaxError: msg' or 'Type: message (at FILE:LINE)'."""
  if isinstance(error, SyntaxError) and error.filename:
    return f'{error.filename}:{error.lineno}: SyntaxError: {error.msg}'
  return f'{type(error).__name__}: {error}{where}'


# ---- flags --------------------------------------------------------------------


def define_flags(config_help: str, *, config_required: bool,
                 task_modules: bool = True):
  """--config (+ overrides), --task_module, --verbose_libraries."""
  flags.DEFINE_string(
      'config', None, config_help + ' Override fields with --config.a.b=value '
      '(every key: configs/default.py).')
  if config_required:
    flags.mark_flags_as_required(['config'])
  if task_modules:
    flags.DEFINE_multi_string(
        'task_module', [], 'Python module to import before the task is looked '
        'up (repeatable): it registers your tasks and mixtures. The current '
        'directory is importable: --task_module=my_tasks for ./my_tasks.py.')
  flags.DEFINE_bool(
      'verbose_libraries', False, "Show TensorFlow's and JAX's start-up "
      "probing and Orbax's/seqio's INFO lines (hidden by default).")


_OVERRIDE = re.compile(r'^--?(no)?config\.')
_OVERRIDES: List[str] = []  # the --config.a.b=v arguments, in order


def split_overrides(argv: Sequence[str]) -> Tuple[List[str], List[str]]:
  """(argv without the --config.a.b[=v] arguments, those arguments)."""
  rest, overrides = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg == '--':
      rest += argv[i:]
      break
    if i and _OVERRIDE.match(arg):
      overrides.append(arg)
      # `--config.a.b v`: the value is the next argument.
      if ('=' not in arg and not arg.lstrip('-').startswith('no') and
          i + 1 < len(argv) and not argv[i + 1].startswith('-')):
        overrides.append(argv[i + 1])
        i += 1
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def parse_flags(argv: Sequence[str]) -> List[str]:
  """absl's flag parsing (the flags_parser of app.run), each mistake one
  line. The --config.a.b=v overrides are kept for load_config: they apply
  to a config that may come from a checkpoint rather than a file."""
  global _OVERRIDES
  try:
    argv = FLAGS.read_flags_from_files(list(argv), force_gnu=False)
    rest, _OVERRIDES = split_overrides(argv)
    remaining = FLAGS(rest)
  except flags.Error as e:
    fail(f'{e}. Pass --helpfull to see the flags.')
  quiet_libraries(verbose=FLAGS['verbose_libraries'].value
                  if 'verbose_libraries' in FLAGS else _VERBOSE)
  return remaining


def no_positional_args(argv: Sequence[str]):
  if len(argv) > 1:
    fail(f'unexpected arguments {list(argv[1:])}; flags look like '
         '--name=value.')


def run(main: Callable[[List[str]], Any]):
  """app.run(main) with this module's flag parsing and the exit watch."""

  def main_then_watch_exit(argv):
    try:
      return main(argv)
    finally:
      _watch_exit()

  app.run(main_then_watch_exit, flags_parser=parse_flags)


# Exiting takes ~1 s after the last line of a run (measured on 2 CPU cores).
_EXIT_WATCH_S = 15.0


def _frame_line(frame) -> str:
  return (f'{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno} '
          f'({frame.f_code.co_name})') if frame is not None else '?'


def _watch_exit(after_s: float = _EXIT_WATCH_S):
  """Says, once, what holds the process when it has not exited `after_s`
  after main returned. Python waits for every non-daemon thread (an
  unfinished asynchronous checkpoint write, a loader's worker) and then runs
  the libraries' exit hooks; a silent minute there looks like a hang."""

  def watch():
    time.sleep(after_s)
    frames = sys._current_frames()  # pylint: disable=protected-access
    waiting = [t for t in threading.enumerate()
               if not t.daemon and t is not threading.main_thread()]
    where = '; '.join(f'thread {t.name!r} at {_frame_line(frames.get(t.ident))}'
                      for t in waiting)
    main_at = _frame_line(frames.get(threading.main_thread().ident))
    logging.warning('Still exiting %.0f s after the run finished: the main '
                    'thread is at %s%s.', after_s, main_at,
                    f'; waiting for {where}' if where else '')

  threading.Thread(target=watch, name='exit_watch', daemon=True).start()


# ---- the config -------------------------------------------------------------------


def _explain_override(overrides: Sequence[str], error: Exception) -> str:
  """A --config.x.y=v naming a key that does not exist, said plainly."""
  ref = config_lib.default_config()
  for arg in overrides:
    if not _OVERRIDE.match(arg):
      continue
    path = re.sub(r'^--?(no)?config\.', '', arg).split('=', 1)[0]
    hint = config_lib.renamed_key_hint(path)
    if hint:
      return f'config key --config.{path} was renamed.{hint}'
    node, seen = ref, []
    for key in path.split('.'):
      if not hasattr(node, 'keys') or key not in node:
        where = '.'.join(seen) or 'the config'
        options = node.keys() if hasattr(node, 'keys') else []
        return (f'unknown config override --config.{path}: {where} has no '
                f'key {key!r}.{config_lib._closest(key, options)} '  # pylint: disable=protected-access
                'Every key is listed in configs/default.py.')
      node = node[key]
      seen.append(key)
  if isinstance(error, flags.Error):
    return str(error)
  return f'bad command line: {error}'


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[str]) -> ml_collections.ConfigDict:
  """`config` with --config.a.b=v applied (in place) and locked, parsed and
  type-checked by ml_collections.config_flags exactly as for a config file."""
  argv = ['prog', *overrides]
  values = flags.FlagValues()
  try:
    holder = config_flags.DEFINE_config_dict(
        'config', config, flag_values=values, sys_argv=argv, lock_config=True)
    values(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    fail(_explain_override(overrides, e))
  return holder.value


def _packaged_configs() -> str:
  try:
    from t5x_lite import configs  # pylint: disable=g-import-not-at-top
  except ImportError:
    return ''
  folder = os.path.dirname(configs.__file__)
  names = []
  for name in sorted(os.listdir(folder)):
    if name.endswith('.py') and not name.startswith('_'):
      with open(os.path.join(folder, name)) as f:
        if 'def get_config(' in f.read():
          names.append(name)
  return (' Packaged configs: ' + ', '.join(f'configs/{n}' for n in names) +
          '.') if names else ''


def _same_file(a: Optional[str], b: str) -> bool:
  try:
    return bool(a) and os.path.samefile(a, b)
  except OSError:
    return False


def config_from_file(spec: str) -> ml_collections.ConfigDict:
  """get_config(ARG) of FILE for --config=FILE[:ARG]; every failure (no such
  file, a syntax error, an exception while it runs) is one line, exit 2."""
  file, sep, arg = spec.partition(':')
  file = config_lib.resolve_config_file(file)
  if not os.path.isfile(file):
    fail(f'--config {file}: no such file (relative to {os.getcwd()}).'
         f'{_packaged_configs()}')
  module_spec = importlib.util.spec_from_file_location('config_config', file)
  module = importlib.util.module_from_spec(module_spec)
  sys.modules[module_spec.name] = module  # dataclasses in config files need it
  try:
    module_spec.loader.exec_module(module)
    get_config = getattr(module, 'get_config', None)
    if get_config is None:
      fail(f'--config {file} defines no get_config(); a config file returns '
           'its ConfigDict from get_config(arg=None).')
    config = get_config(*([arg] if sep else []))
  except Exception as e:  # pylint: disable=broad-except
    if isinstance(e, SyntaxError) and _same_file(e.filename, file):
      fail(f'--config {file}:{e.lineno}: SyntaxError: {e.msg}')
    fail(f'--config {file}: {_describe(e, _where(e))}')
  if not isinstance(config, ml_collections.ConfigDict):
    fail(f'--config {file}: get_config() returned {type(config).__name__}, '
         'not an ml_collections.ConfigDict.')
  return config


# The machine's, not the model's: a config read back from a checkpoint
# takes these from configs/default.py (the checkpoint restores into any mesh).
_NOT_FROM_CHECKPOINT = ('mesh.data', 'mesh.fsdp', 'mesh.tensor',
                        'mesh.dcn_data', 'mesh.dcn_fsdp', 'distributed',
                        'compile.cache_dir')
# Groups whose keys vary (a decoder-only task has no 'inputs'): replaced whole.
_REPLACED_WHOLE = ('task.feature_lengths',)


def _plain(value):
  """JSON values as a config holds them: lists -> tuples, dicts -> groups."""
  if isinstance(value, list):
    return tuple(_plain(v) for v in value)
  if isinstance(value, dict):
    return ml_collections.ConfigDict({k: _plain(v) for k, v in value.items()})
  return value


def _overlay(node, saved: Mapping[str, Any], prefix: str) -> List[str]:
  """Writes `saved` into the group `node`; returns the keys it skipped."""
  skipped = []
  for key, value in saved.items():
    path = f'{prefix}{key}'
    if path in _NOT_FROM_CHECKPOINT:
      continue
    if key not in node:
      skipped.append(path)
      continue
    if (isinstance(node[key], ml_collections.ConfigDict) and
        path not in _REPLACED_WHOLE):
      if isinstance(value, dict):
        skipped += _overlay(node[key], value, path + '.')
      else:
        skipped.append(path)
      continue
    try:
      node[key] = _plain(value)
    except (TypeError, ValueError):
      skipped.append(path)
  return skipped


def config_from_saved(saved: Mapping[str, Any], where: str
                      ) -> ml_collections.ConfigDict:
  """configs/default.py overwritten with a checkpoint's saved config dict
  (keys this version does not know are skipped, with a warning)."""
  config = config_lib.default_config()
  skipped = _overlay(config, saved, '')
  logging.info('No --config: using the config saved with %s (its mesh, '
               'distributed and compile cache settings are this machine\'s '
               'defaults).', where)
  if skipped:
    logging.warning('The config saved with %s has keys this version does '
                    'not know; ignored: %s.', where, ', '.join(skipped))
  return config


def checkpoint_config(path: str) -> Tuple[Dict[str, Any], str]:
  """(the config dict saved with the checkpoint at `path`, where it was
  read). A missing checkpoint exits 1; one without a saved config exits 2."""
  from t5x_lite import checkpoints  # pylint: disable=g-import-not-at-top
  from t5x_lite import model_loading  # pylint: disable=g-import-not-at-top
  try:
    kind, where, _ = model_loading.resolve_checkpoint(path)
  except checkpoints.CheckpointError as e:
    fail(e, 1)
  saved = model_loading.stored_config(kind, where)
  if not saved:
    fail(f'{where} holds no saved config (no config item, no config.json '
         'beside it); pass --config=FILE, the config it was trained with.')
  return saved, where


def load_config(saved: Optional[Callable[[], Tuple[Mapping[str, Any], str]]]
                = None) -> ml_collections.ConfigDict:
  """The run's config: --config's file or, without --config, `saved()`
  (eval/infer: checkpoint_config), then the --config.a.b=v overrides.
  Locked, as config_flags returns it."""
  if FLAGS.config:
    config = config_from_file(FLAGS.config)
  elif saved is not None:
    config = config_from_saved(*saved())
  else:
    fail('--config is required: --config=configs/local_tiny.py, say.')
  return apply_overrides(config, _OVERRIDES)


# ---- task modules, the compile cache -----------------------------------------------


def import_task_modules(config):
  """Imports config.task.modules and --task_module (in that order) and
  records them all in config.task.modules, so the config saved with a run
  names them and eval/infer import them from the checkpoint alone."""
  from_flags = list(FLAGS['task_module'].value) if 'task_module' in FLAGS else []
  has_key = 'modules' in config.task
  names = list(dict.fromkeys([*(config.task.modules if has_key else ()),
                              *from_flags]))
  if names and os.getcwd() not in sys.path and '' not in sys.path:
    sys.path.insert(0, os.getcwd())  # console scripts leave it out
  for name in names:
    source = '--task_module' if name in from_flags else 'task.modules'
    try:
      importlib.import_module(name)
    except Exception as e:  # pylint: disable=broad-except
      missing = isinstance(e, ModuleNotFoundError) and e.name == name
      hint = ''
      if missing and (name.endswith('.py') or os.sep in name):
        hint = ' Give a module name (my_tasks for ./my_tasks.py), not a path.'
      fail(f'{source} {name}: {_describe(e, "" if missing else _where(e))}'
           f'{hint}')
  if has_key and tuple(names) != tuple(config.task.modules):
    with config.unlocked():
      config.task.modules = tuple(names)


def enable_compile_cache(config):
  """XLA's persistent compilation cache at config.compile.cache_dir
  (t5x_lite/compile_cache.py); a config saved before the key existed has
  none."""
  from t5x_lite import compile_cache  # pylint: disable=g-import-not-at-top
  if 'compile' in config and 'cache_dir' in config.compile:
    compile_cache.enable(config.compile.cache_dir)


def prepare(config):
  """After load_config: the input pipeline's libraries (quietly), the task
  modules, the compile cache."""
  with _native_stderr_filtered():
    from t5x_lite import tasks  # pylint: disable=g-import-not-at-top,unused-import
  import_task_modules(config)
  enable_compile_cache(config)


# ---- a quiet console ----------------------------------------------------------------

# Libraries whose INFO lines are left out (their warnings stay): Orbax logs
# ~15 lines per save or restore, seqio one per dataset, JAX probes for a TPU.
_QUIET_PACKAGES = ('orbax', 'seqio', 'jax', 'jaxlib', 'flax', 'tensorflow',
                   'tensorflow_datasets', 'tensorflow_text', 'etils',
                   'tensorstore', 'optax', 'chex', 'absl')
# Library warnings that t5x_lite itself reports better.
_REDUNDANT_WARNINGS = (
    # seqio, for a task without metric fns; evaluation.py says so in its report.
    'No eval task with valid split and metric fn found',
)
# What TensorFlow's C++ library prints to stderr while it loads and probes
# for CUDA, before TF_CPP_MIN_LOG_LEVEL applies (TF >= 2.16 logs through
# absl before absl::InitializeLog). The input pipeline runs on the CPU and
# TensorFlow is kept off the GPUs, so none of it concerns a run.
_NATIVE_NOISE = re.compile('|'.join((
    r'All log messages before absl::InitializeLog\(\) is called',
    r'port\.cc:\d+\] oneDNN custom operations are on',
    r'cudart_stub\.cc:\d+\]',
    r'cuda_platform\.cc:\d+\] failed call to cuInit',
    r'cuda_(dnn|fft|blas)\.cc:\d+\] Unable to register',
    r'computation_placer\.cc:\d+\] computation placer already registered',
    r'cpu_feature_guard\.cc:\d+\]',
    r'To enable the following instructions: ',
    r'TF-TRT Warning: Could not find TensorRT',
)))


def _package_of(path: str) -> str:
  """The top-level package of an installed module's file ('' for others)."""
  parts = path.replace(os.sep, '/').split('/')
  for i, part in enumerate(parts[:-1]):
    if part in ('site-packages', 'dist-packages'):
      return parts[i + 1].split('.')[0]
  return ''


class _QuietLibraries(py_logging.Filter):
  """On absl's handler: the libraries' INFO lines out, their warnings in."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.levelno >= py_logging.WARNING:
      message = str(record.msg)
      return not any(m in message for m in _REDUNDANT_WARNINGS)
    return _package_of(record.pathname) not in _QUIET_PACKAGES


_FILTER = _QuietLibraries()


def _library_unraisable(unraisable) -> bool:
  """An exception Python could only ignore, raised inside Orbax/TensorStore's
  asyncio reads (an abandoned coroutine of a failed restore, 'Event loop is
  closed' at exit): the failure itself is already reported in one line."""
  frames = traceback.extract_tb(unraisable.exc_traceback)
  names = [f.filename.replace(os.sep, '/') for f in frames]
  return ('coroutine' in repr(unraisable.object) or any(
      '/orbax/' in n or '/asyncio/' in n or '/tensorstore/' in n
      for n in names))


def _quiet_unraisablehook(unraisable):
  if _library_unraisable(unraisable):
    # Each one prints a traceback and a TensorStore spec (hundreds of lines)
    # when the garbage collector happens to finalise it: debug level only.
    logging.debug('Ignored in %r: %s', unraisable.object,
                  str(unraisable.exc_value).strip().splitlines()[:1])
  else:
    sys.__unraisablehook__(unraisable)


def quiet_libraries(verbose: bool = False):
  """Installs (or, verbose, removes) the library log filter on absl's
  handler, which Python logging's root logger feeds too (JAX's loggers), and
  the hook that keeps Orbax's ignored coroutine errors at debug level."""
  global _VERBOSE
  _VERBOSE = verbose
  handler = logging.get_absl_handler()
  if verbose:
    handler.removeFilter(_FILTER)
    sys.unraisablehook = sys.__unraisablehook__
  else:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)
    sys.unraisablehook = _quiet_unraisablehook


@contextlib.contextmanager
def _native_stderr_filtered():
  """Runs the block with file descriptor 2 captured; replays what was
  written there without the _NATIVE_NOISE lines (C++ libraries write to the
  descriptor, not to sys.stderr, so a logging filter cannot see them)."""
  if _VERBOSE:
    yield
    return
  sys.stderr.flush()
  saved_fd = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved_fd, 2)
      os.close(saved_fd)
      captured.seek(0)
      text = captured.read().decode('utf-8', errors='replace')
      kept = [line for line in text.splitlines(keepends=True)
              if not _NATIVE_NOISE.search(line)]
      if kept:
        sys.stderr.write(''.join(kept))
        sys.stderr.flush()
