r"""Back translation for translate_en_de, end to end, from its configs.

    python scripts/back_translate.py --workdir=runs/back_translation
    python scripts/back_translate.py --workdir=runs/bt_greedy --decode=greedy \
        --num_monolingual=8000 --steps=1000 --tag=''
    # a smoke run (what tests/test_back_translation.py does):
    python scripts/back_translate.py --workdir=/tmp/bt --steps=4 \
        --num_monolingual=24 --eval_max_examples=24

translate_en_de/train is split once into a parallel half and a monolingual
half whose English is never read (t5x_lite/tasks/back_translation.py). The
stages, each one normal entrypoint run as a subprocess with
configs/back_translation.py, as a user would run it:

  1. reverse        t5x_lite.train  German -> English on the parallel half
  2. reverse eval   t5x_lite.eval   its BLEU on the test split (de -> en)
  3. decode         t5x_lite.infer  its English for the first
                    --num_monolingual monolingual German sentences, in
                    batches (--decode: beam, greedy or sample) ->
                    WORKDIR/synthetic.tsv and WORKDIR/back_translated_tasks.py,
                    the task module that registers them
                    (back_translation.register_synthetic, --tag)
  4. forward_real   t5x_lite.train  English -> German, the real pairs only
     forward_mixed  t5x_lite.train  the same on real + synthetic pairs
                    (same steps, batch, optimizer and seed)
  5. forward evals  t5x_lite.eval   BLEU (sacrebleu) on translate_en_de/test
  6. one JSON line per result, a markdown table, WORKDIR/results.json

A rerun skips every stage whose output exists (a finished checkpoint, an
eval_results.json of that step, the synthetic pairs) and an interrupted
training stage resumes from its newest checkpoint. Each stage records its
settings in WORKDIR/stages.json; a rerun with other settings stops with one
line instead of mixing two runs in one workdir.
"""
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # `python scripts/back_translate.py` from anywhere
  sys.path.insert(0, ROOT)
CONFIG = os.path.join(ROOT, 'configs', 'back_translation.py')
TASK_MODULE = 'back_translated_tasks'
STATE_FILE = 'stages.json'
RESULTS_FILE = 'results.json'
TEST_SPLIT = 'test'
REAL_TEST_TASK = 'translate_en_de'
REVERSE_TASK = 'translate_de_en_parallel'  # its test split: the same pairs
DE_EN_PREFIX = 'translate German to English: '  # back_translation's

_WORKDIR = flags.DEFINE_string('workdir', 'runs/back_translation',
                               'Every stage writes under this directory.')
_SIZE = flags.DEFINE_string('size', 'tiny', 'Model size (configs/'
                            'back_translation.py: tiny or a T5.1.1 row).')
_STEPS = flags.DEFINE_integer('steps', 400, 'Training steps of every model.')
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Training batch (rows).')
_SEED = flags.DEFINE_integer('seed', 0, 'train.seed of every model.')
_NUM_MONO = flags.DEFINE_integer(
    'num_monolingual', 3000, 'Monolingual German sentences to back-translate '
    '(a seeded sample of the 24,287 of the monolingual half).')
_DECODE = flags.DEFINE_enum('decode', 'beam', ['beam', 'greedy', 'sample'],
                            'How the reverse model decodes the German.')
_BEAM = flags.DEFINE_integer('beam_size', 4, '--decode=beam: beams.')
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0,
                                  '--decode=sample: temperature.')
_DECODE_BATCH = flags.DEFINE_integer('decode_batch_size', 64,
                                     'Sentences per decode batch.')
_TAG = flags.DEFINE_string(
    'tag', '<extra_id_0>', 'Put before each synthetic English input (tagged '
    "back translation, Caswell et al. 2019); '' for untagged.")
_EVAL_MAX = flags.DEFINE_integer(
    'eval_max_examples', 0, 'Test examples the BLEU evals decode (0: all '
    '476).')
_OVERRIDES = flags.DEFINE_multi_string(
    'override', [], 'a.b=v: passed as --config.a.b=v to every train run.')
_PYTHON = flags.DEFINE_string('python', sys.executable,
                              'The interpreter that runs the entrypoints.')


# ---- bookkeeping ----------------------------------------------------------------------


class Stages:
  """WORKDIR/stages.json: the settings each stage ran with."""

  def __init__(self, workdir):
    self.path = os.path.join(workdir, STATE_FILE)
    self.done = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.done = json.load(f)

  def check(self, stage, key):
    """Stops with one line when `stage` ran here with other settings."""
    old = self.done.get(stage)
    if old is not None and old != key:
      changed = sorted(k for k in set(old) | set(key)
                       if old.get(k) != key.get(k))
      usage_error(
          f'stage {stage!r} in {os.path.dirname(self.path)} ran with other '
          f'settings ({", ".join(changed)}: {[old.get(k) for k in changed]} '
          f'-> {[key.get(k) for k in changed]}); use a fresh --workdir or '
          f'delete that stage\'s directory and its entry in {self.path}.')

  def record(self, stage, key):
    self.done[stage] = key
    tmp = self.path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(self.done, f, indent=1)
    os.replace(tmp, self.path)


def usage_error(message):
  """One line on stderr, exit 2 (the entrypoints' convention)."""
  print(f'back_translate: {message}', file=sys.stderr)
  sys.exit(2)


def banner(text):
  print(f'\n==== {text} ({time.strftime("%H:%M:%S")})', flush=True)


def run(cmd, env):
  print('$ ' + ' '.join(cmd), flush=True)
  rc = subprocess.call(cmd, env=env, cwd=ROOT)
  if rc:
    sys.exit(f'back_translate: {cmd[2]} exited {rc}: {" ".join(cmd)}')


def subprocess_env(workdir):
  """The entrypoints import the repository and the run's task module."""
  env = dict(os.environ)
  paths = [workdir, ROOT] + [p for p in env.get('PYTHONPATH', '').split(
      os.pathsep) if p]
  env['PYTHONPATH'] = os.pathsep.join(dict.fromkeys(paths))
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


# ---- stages ---------------------------------------------------------------------------


def train(stages, workdir, stage, key, env, task_module=None):
  """t5x_lite.train of configs/back_translation.py:STAGE to --steps."""
  stages.check(stage, key)
  out = os.path.join(workdir, stage)
  if os.path.isdir(os.path.join(out, 'checkpoints', str(_STEPS.value))):
    print(f'{stage}: step {_STEPS.value} checkpoint exists, skipped')
    stages.record(stage, key)
    return
  cmd = [_PYTHON.value, '-m', 't5x_lite.train',
         f'--config={CONFIG}:{stage},{_SIZE.value}', f'--workdir={out}',
         f'--config.train.num_steps={_STEPS.value}',
         f'--config.train.seed={_SEED.value}',
         f'--config.train.batch_size={_BATCH.value}']
  cmd += [f'--config.{o}' for o in _OVERRIDES.value]
  if task_module:
    cmd.append(f'--task_module={task_module}')
  stages.record(stage, key)  # before: an interrupted run resumes, same key
  run(cmd, env)


def evaluate(stages, workdir, stage, task, key, env):
  """t5x_lite.eval of the stage's last checkpoint on task/test; results."""
  name = f'{stage}_eval'
  stages.check(name, key)
  out = os.path.join(workdir, stage)
  path = os.path.join(out, 'eval_results.json')
  if os.path.exists(path) and name in stages.done:
    with open(path) as f:
      results = json.load(f)
    if (results['step'], results['task'], results['split']) == (
        _STEPS.value, task, TEST_SPLIT):
      print(f'{name}: {path} exists, skipped')
      return results
  run([_PYTHON.value, '-m', 't5x_lite.eval', f'--workdir={out}',
       f'--config.task.name={task}', f'--config.task.eval_split={TEST_SPLIT}',
       f'--config.eval.max_examples={_EVAL_MAX.value}'], env)
  stages.record(name, key)
  with open(path) as f:
    return json.load(f)


def decoding_overrides():
  flags_ = [f'--config.decoding.method={_DECODE.value}']
  if _DECODE.value == 'beam':
    flags_.append(f'--config.decoding.beam_size={_BEAM.value}')
  if _DECODE.value == 'sample':
    flags_ += [f'--config.decoding.temperature={_TEMPERATURE.value}',
               f'--config.decoding.seed={_SEED.value}']
  return flags_


def back_translate(stages, workdir, key, env):
  """The reverse model's English for monolingual German -> synthetic.tsv
  (t5x_lite.infer in batches), and the task module that registers it."""
  stages.check('decode', key)
  tsv = os.path.join(workdir, 'synthetic.tsv')
  module = os.path.join(workdir, f'{TASK_MODULE}.py')
  info_path = os.path.join(workdir, 'synthetic.json')
  if os.path.exists(tsv) and os.path.exists(info_path) and (
      'decode' in stages.done):
    print(f'decode: {tsv} exists, skipped')
    with open(info_path) as f:
      info = json.load(f)
  else:
    # TensorFlow (t5x_lite.tasks) loads here only: a rerun skips it.
    from t5x_lite.tasks import back_translation  # pylint: disable=g-import-not-at-top
    german = back_translation.monolingual_german(_NUM_MONO.value)
    inputs = os.path.join(workdir, 'monolingual_de.jsonl')
    with open(inputs, 'w', encoding='utf-8') as f:
      for de in german:  # JSONL: a sentence may start with '{'
        f.write(json.dumps({'input': DE_EN_PREFIX + de},
                           ensure_ascii=False) + '\n')
    preds = os.path.join(workdir, 'monolingual_en.jsonl')
    start = time.time()
    run([_PYTHON.value, '-m', 't5x_lite.infer',
         f'--checkpoint={os.path.join(workdir, "reverse", "checkpoints")}',
         f'--input_file={inputs}', f'--output={preds}',
         f'--batch_size={_DECODE_BATCH.value}'] + decoding_overrides(), env)
    seconds = time.time() - start
    with open(preds, encoding='utf-8') as f:
      english = [json.loads(l)['prediction'] for l in f if l.strip()]
    if len(english) != len(german):
      sys.exit(f'back_translate: {preds} has {len(english)} predictions for '
               f'{len(german)} inputs.')
    written = back_translation.write_synthetic(tsv, english, german)
    info = {'parallel_pairs': back_translation.num_parallel(),
            'monolingual': len(german), 'synthetic_pairs': written,
            'decode': _DECODE.value, 'decode_seconds': round(seconds, 1),
            'examples': [{'de': d, 'en': e}
                         for d, e in zip(german[:5], english[:5])]}
    with open(info_path, 'w') as f:
      json.dump(info, f, indent=1, ensure_ascii=False)
    stages.record('decode', key)
  # Always rewritten: it is cheap and names this run's file and tag.
  with open(module, 'w') as f:
    f.write('"""Written by scripts/back_translate.py: this run\'s synthetic '
            'pairs as tasks."""\n'
            'from t5x_lite.tasks import back_translation\n\n'
            f'back_translation.register_synthetic({os.path.abspath(tsv)!r}, '
            f'tag={_TAG.value!r})\n')
  return info


# ---- the report -----------------------------------------------------------------------


def result_row(model, trained_on, task, results, extra=None):
  metrics = results['metrics'].get(task, {})
  row = {'model': model, 'trained_on': trained_on, 'eval': f'{task}/'
         f'{results["split"]}', 'step': results['step'], 'seed': _SEED.value,
         'bleu': metrics.get('bleu'),
         'teacher_forced_loss': results['teacher_forced'].get('loss'),
         'decoding': results['decoding']['method']}
  row.update(extra or {})
  return row


def table(rows):
  lines = ['| model | trained on | eval | steps | BLEU | test loss |',
           '|---|---|---|---|---|---|']
  for r in rows:
    bleu = 'n/a' if r['bleu'] is None else f'{r["bleu"]:.2f}'
    loss = r['teacher_forced_loss']
    loss = 'n/a' if loss is None else f'{loss:.4f}'
    lines.append(f'| {r["model"]} | {r["trained_on"]} | {r["eval"]} | '
                 f'{r["step"]} | {bleu} | {loss} |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    usage_error(f'unexpected arguments {argv[1:]}; every setting is a flag '
                '(--help lists them).')
  if _STEPS.value <= 0 or _NUM_MONO.value <= 0:
    usage_error(f'--steps={_STEPS.value} and --num_monolingual='
                f'{_NUM_MONO.value} must both be positive.')
  workdir = os.path.abspath(_WORKDIR.value)
  os.makedirs(workdir, exist_ok=True)
  stages = Stages(workdir)
  env = subprocess_env(workdir)
  start = time.time()
  model_key = {'size': _SIZE.value, 'steps': _STEPS.value,
               'batch_size': _BATCH.value, 'seed': _SEED.value,
               'overrides': list(_OVERRIDES.value)}
  eval_key = dict(model_key, eval_max_examples=_EVAL_MAX.value)
  decode_key = dict(model_key, num_monolingual=_NUM_MONO.value,
                    decode=_DECODE.value, beam_size=_BEAM.value,
                    temperature=_TEMPERATURE.value)
  mixed_key = dict(decode_key, tag=_TAG.value)

  banner('1/5 reverse model (German -> English) on the parallel half')
  train(stages, workdir, 'reverse', model_key, env)
  banner('2/5 reverse model BLEU on the test split')
  reverse = evaluate(stages, workdir, 'reverse', REVERSE_TASK, eval_key, env)
  banner(f'3/5 back-translate {_NUM_MONO.value} monolingual German sentences '
         f'({_DECODE.value})')
  info = back_translate(stages, workdir, decode_key, env)
  banner('4/5 English -> German: real pairs only, then real + synthetic')
  train(stages, workdir, 'forward_real', model_key, env)
  train(stages, workdir, 'forward_mixed', mixed_key, env,
        task_module=TASK_MODULE)
  banner('5/5 English -> German BLEU on translate_en_de/test')
  real = evaluate(stages, workdir, 'forward_real', REAL_TEST_TASK, eval_key,
                  env)
  mixed = evaluate(stages, workdir, 'forward_mixed', REAL_TEST_TASK,
                   dict(eval_key, **mixed_key), env)

  num_real = info.get('parallel_pairs')
  if num_real is None:  # synthetic.json written before the count was kept
    from t5x_lite.tasks import back_translation  # pylint: disable=g-import-not-at-top
    num_real = back_translation.num_parallel()
  tag = f', tagged {_TAG.value}' if _TAG.value else ', untagged'
  rows = [
      result_row('reverse (de -> en)', f'{num_real:,} real pairs',
                 REVERSE_TASK, reverse),
      result_row('forward real-only (en -> de)', f'{num_real:,} real pairs',
                 REAL_TEST_TASK, real),
      result_row('forward real + synthetic (en -> de)',
                 f'{num_real:,} real + {info["synthetic_pairs"]:,} synthetic '
                 f'({info["decode"]}{tag})', REAL_TEST_TASK, mixed,
                 {'synthetic_pairs': info['synthetic_pairs'],
                  'tag': _TAG.value}),
  ]
  print()
  for r in rows:
    print(json.dumps(r, ensure_ascii=False))
  print()
  print(table(rows))
  gain = (None if None in (rows[1]['bleu'], rows[2]['bleu'])
          else rows[2]['bleu'] - rows[1]['bleu'])
  seconds = time.time() - start
  if gain is not None:
    print(f'\nback translation: {gain:+.2f} BLEU over real-only at '
          f'{_STEPS.value} steps, seed {_SEED.value} '
          f'({int(seconds) // 60}m{int(seconds) % 60:02d}s this invocation)')
  with open(os.path.join(workdir, RESULTS_FILE), 'w') as f:
    json.dump({'rows': rows, 'synthetic': info, 'bleu_gain': gain,
               'seconds_this_invocation': round(seconds, 1)}, f, indent=1,
              ensure_ascii=False)


if __name__ == '__main__':
  app.run(main)
