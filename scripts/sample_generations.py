r"""Samples from a pretrained causal LM and GLM blank infilling, via the library.

    python -m t5x_lite.train --config=configs/pretrain_lm.py:causal --workdir=/tmp/lm
    python -m t5x_lite.train --config=configs/pretrain_glm.py:tiny --workdir=/tmp/glm
    python scripts/sample_generations.py --causal_workdir=/tmp/lm \
        --glm_workdir=/tmp/glm [--out=runs/samples.md]

Causal LM: `generation.predict_batch` from BOS alone, and prompted
continuations with `bidirectional_prompt=False` (causal attention over the prompt, as
the model was trained); both take the cached decode path.

GLM: a line with a [MASK] is part A; `objectives.glm.infill` appends
[S] and generates the span until EOS with GLM's 2D positions (through
`generation.predict_with_features`, which reruns the forward each step).

This file only loads checkpoints, builds prompts and formats text.
Decoding settings come from each config's `decoding` group (the LM configs
sample at temperature 0.8 with top-k 40); --greedy adds argmax decodes.
"""
import dataclasses
import os
import sys

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import numpy as np

from t5x_lite import generation
from t5x_lite import model_loading
from t5x_lite.objectives import glm

_CAUSAL = flags.DEFINE_string('causal_workdir', None,
                              'Workdir of a configs/pretrain_lm.py:causal run.')
_CAUSAL_CONFIG = flags.DEFINE_string('causal_config',
                                     'configs/pretrain_lm.py:causal',
                                     'Its config file[:arg].')
_GLM = flags.DEFINE_string('glm_workdir', None,
                           'Workdir of a configs/pretrain_glm.py run.')
_GLM_CONFIG = flags.DEFINE_string('glm_config', 'configs/pretrain_glm.py:tiny',
                                  'Its config file[:arg].')
_NUM = flags.DEFINE_integer('num_samples', 3, 'Samples per prompt.')
_LENGTH = flags.DEFINE_integer('length', 48, 'Tokens per causal sample.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_GREEDY = flags.DEFINE_bool('greedy', True, 'Also decode greedily.')
_OUT = flags.DEFINE_string('out', '', 'Also write the samples (markdown).')

PROMPTS = (
    'KING HENRY. Now, lords,',
    'ROMEO. O, she doth teach',
    'To be, or not to be,',
)
# GLM: `___` is the blank the model fills.
BLANKS = (
    'O Romeo, Romeo! wherefore art thou ___?',
    'Now is the winter of our ___ made glorious summer by this sun of York.',
    'All the world\'s a stage, and all the men and women merely ___.',
    'KING. My lord, the ___ is come to court.',
)


def _load_config(spec):
  import importlib.util
  path, _, arg = spec.partition(':')
  mod_spec = importlib.util.spec_from_file_location(
      'cfg', path if os.path.isabs(path) else os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  config.mesh.data = -1
  return config


def _vocab(config):
  from t5x_lite import tasks
  return tasks.get_vocabulary(config.task.name)


def _settings(config, greedy):
  s = generation.DecodeSettings.from_config(config.decoding)
  return (0.0, 0, 1.0) if greedy else (s.temperature, s.top_k, s.top_p)


# ---- causal LM -------------------------------------------------------------------------


def causal_samples(workdir, config_spec, out):
  config = _load_config(config_spec)
  model, params, info = model_loading.load_model(
      config, model_loading.default_checkpoint(workdir))
  vocab = _vocab(config)
  eos = vocab.eos_id
  length = _LENGTH.value
  out.append(f'## causal LM ({info["checkpoint"]})\n')

  # 1. Free-running, through predict_batch (BOS only, KV cache).
  batch = {'decoder_input_tokens': np.zeros((_NUM.value, length), np.int32)}
  tokens, _ = generation.predict_batch(model, params, batch, config.decoding,
                                     jax.random.PRNGKey(_SEED.value))
  out.append('From BOS (generation.predict_batch, '
             f'{config.decoding.method}, T={config.decoding.temperature}, '
             f'top-k {config.decoding.top_k}):\n')
  for row in np.asarray(tokens):
    out.append(f'- {_text(vocab, row, eos)!r}')
  out.append('')

  # 2. Prompted: the prompt is forced, causal attention over all of it.
  for greedy in ((False, True) if _GREEDY.value else (False,)):
    settings = dataclasses.replace(
        generation.DecodeSettings.from_config(config.decoding),
        method='greedy' if greedy else 'sample', eos_id=eos)
    n = 1 if greedy else _NUM.value
    out.append(f'Prompted ({"greedy" if greedy else "sampled"}):\n')
    for prompt in PROMPTS:
      tokens, _ = generation.predict_batch(
          model, params, _prompt_batch(vocab.encode(prompt), n, length),
          settings, jax.random.PRNGKey(_SEED.value), bidirectional_prompt=False)
      for row in np.asarray(tokens):
        out.append(f'- {prompt} **{_text(vocab, row, eos)}**')
    out.append('')


def _prompt_batch(ids, n, length):
  """n copies of BOS + ids in a decoder-only buffer of `length`, the prompt
  marked by decoder_causal_attention."""
  dec_in = np.zeros((n, length), np.int32)
  dec_in[:, 1:len(ids) + 1] = ids
  causal = np.zeros((n, length), np.int32)
  causal[:, :len(ids) + 1] = 1
  return {'decoder_input_tokens': dec_in, 'decoder_causal_attention': causal}


def _text(vocab, ids, eos):
  ids = [int(t) for t in ids]
  if eos in ids:
    ids = ids[:ids.index(eos)]
  return vocab.decode([t for t in ids if t > 0])


# ---- GLM blank infilling -------------------------------------------------------------------


def glm_samples(workdir, config_spec, out):
  from t5x_lite.tasks import vocabularies
  config = _load_config(config_spec)
  model, params, info = model_loading.load_model(
      config, model_loading.default_checkpoint(workdir))
  vocab = _vocab(config)
  mask, start, eos = (vocabularies.mask_id(vocab),
                      vocabularies.span_start_id(vocab), vocab.eos_id)
  out.append(f'## GLM blank infilling ({info["checkpoint"]})\n')
  for greedy in ((False, True) if _GREEDY.value else (False,)):
    temperature, topk, topp = _settings(config, greedy)
    n = 1 if greedy else _NUM.value
    out.append(f'{"greedy" if greedy else "sampled"} '
               f'(T={temperature}, top-k {topk}):\n')
    for i, line in enumerate(BLANKS):
      left, right = line.split('___')
      l_ids, r_ids = vocab.encode(left.rstrip()), vocab.encode(right)
      part_a = np.array([l_ids + [mask] + r_ids] * n, np.int32)
      spans = glm.infill(model, params, part_a, len(l_ids), start, eos,
                                jax.random.PRNGKey(_SEED.value + i),
                                temperature, topk, topp)
      fills = [_text(vocab, s, eos) for s in spans]
      out.append(f'- {line}  →  ' + ' | '.join(f'**{f}**' for f in fills))
    out.append('')


def main(argv):
  del argv
  if not (_CAUSAL.value or _GLM.value):
    raise app.UsageError('Pass --causal_workdir and/or --glm_workdir.')
  out = []
  if _CAUSAL.value:
    causal_samples(_CAUSAL.value, _CAUSAL_CONFIG.value, out)
  if _GLM.value:
    glm_samples(_GLM.value, _GLM_CONFIG.value, out)
  text = '\n'.join(out)
  print(text)
  if _OUT.value:
    path = _OUT.value if os.path.isabs(_OUT.value) else os.path.join(
        ROOT, _OUT.value)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
      f.write(text + '\n')


if __name__ == '__main__':
  app.run(main)
