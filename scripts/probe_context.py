r"""Does an encoder use its context yet? Two probes on a BERT or ELECTRA run.

    python scripts/probe_context.py --workdir=runs/objectives/electra [--step=600]

1. Masked-LM loss by kind of selected position (ELECTRA: its generator;
   BERT: the mlm head), next to the unigram entropy of the same tokens.
   At a [MASK] the only information is the context: a loss at or above the
   unigram model's means the model predicts word frequencies, nothing more.
   At a kept position the token is in the input, so copying it is free.
2. Neighbour sensitivity: change the token at one position of every row and
   measure how far the final hidden states move (L2), at that position, at
   distances 1-2 and at distances >= --far_distance (32; 16 for 32-token
   rows). A model that reads its neighbours
   moves them more than far positions; equal numbers mean a bag of words
   (attention spread evenly), which can only flag a replaced token by what
   the token is, never by whether it fits where it stands.

Prints one JSON line (the numbers README quotes for ELECTRA).
"""
import json
import os
import sys

from absl import app
from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from t5x_lite import checkpoint_inspection
from t5x_lite import objectives
from t5x_lite import params_checkpoints

_WORKDIR = flags.DEFINE_string('workdir', None, 'An encoder_only run (BERT or '
                               'ELECTRA) with config.json and checkpoints/.')
_STEP = flags.DEFINE_integer('step', -1, 'Checkpoint step (-1: the latest).')
_BATCHES = flags.DEFINE_integer('num_batches', 4, 'Validation batches of 32.')
_TRAIN_BATCHES = flags.DEFINE_integer(
    'train_batches', 100, 'Train batches of 32 whose token frequencies make '
    'the unigram baseline.')
_POSITION = flags.DEFINE_integer('position', 10, 'Where the token is changed.')
_FAR = flags.DEFINE_integer(
    'far_distance', 32, 'Distances from --position that count as far; must '
    'fit in a row (16 for 32-token rows).')


def unigram_cross_entropy(train_tokens, tokens, vocab_size: int) -> float:
  """Mean -log p(token) (nats) of `tokens` under the add-one-smoothed unigram
  distribution of `train_tokens` (ids < vocab_size): what a model that
  knows word frequencies and nothing else scores."""
  counts = np.bincount(np.asarray(train_tokens).ravel(),
                       minlength=vocab_size).astype(np.float64) + 1.0
  logp = np.log(counts / counts.sum())
  return float(-np.mean(logp[np.asarray(tokens).ravel()]))


def mlm_nll_by_kind(logits, batch, mask_id: int):
  """{'mask' | 'kept' | 'random': (summed nll, count)} over selected positions.

  logits [batch, len, vocab]; kinds by the input token at the position:
  mask_id, the original (kept) or any other (a random replacement).
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32))
  targets = batch['encoder_target_tokens']
  inputs = batch['encoder_input_tokens']
  nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
  selected = batch['encoder_loss_weights'] > 0
  kinds = {'mask': inputs == mask_id, 'kept': inputs == targets}
  kinds['random'] = ~kinds['mask'] & ~kinds['kept']
  return {k: (float(jnp.sum(jnp.where(selected & m, nll, 0.0))),
              int(jnp.sum(selected & m))) for k, m in kinds.items()}


def neighbour_sensitivity(hidden_fn, tokens, position: int, new_token: int,
                          far_distance: int = 32):
  """Mean L2 move of the hidden states [b, len, emb] when the token at
  `position` (real tokens only) becomes `new_token`: at the position, at
  distances 1-2, and at distances >= far_distance (real tokens of the same
  rows)."""
  length = tokens.shape[1]
  if position + far_distance >= length and position - far_distance < 0:
    raise ValueError(
        f'far_distance={far_distance} from position {position} falls outside '
        f'rows of {length} tokens; pass a smaller --far_distance.')
  changed = tokens.at[:, position].set(
      jnp.where(tokens[:, position] > 0, new_token, 0))
  move = jnp.linalg.norm(hidden_fn(changed) - hidden_fn(tokens), axis=-1)
  dist = jnp.abs(jnp.arange(tokens.shape[1]) - position)[None]
  rows = (tokens[:, position] > 0)[:, None] & (tokens > 0)

  def mean(where):
    w = rows & where
    return float(jnp.sum(jnp.where(w, move, 0.0)) / jnp.maximum(w.sum(), 1))

  return {'self': mean(dist == 0), 'near': mean((dist >= 1) & (dist <= 2)),
          'far': mean(dist >= far_distance)}


def probe(config, params, batches, train_tokens, position=10,
          far_distance=32):
  """Both probes over `batches` (dicts of [b, len] arrays); one dict out.
  train_tokens: ids whose frequencies make the unigram baseline."""
  from t5x_lite.tasks import vocabularies  # pylint: disable=g-import-not-at-top
  model = objectives.build_model(config)
  is_electra = config.objective.name == 'electra'
  mask_id = vocabularies.mask_id(vocabularies.default_vocabulary())
  sums = {}
  moves = []
  originals = []
  for batch in batches:
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    if is_electra:
      logits = model.generator_logits(params, batch)
    else:
      logits = model.apply(params, batch, head='vocab')
    for k, (s, n) in mlm_nll_by_kind(logits, batch, mask_id).items():
      a = sums.setdefault(k, [0.0, 0])
      a[0] += s
      a[1] += n
    selected = batch['encoder_loss_weights'] > 0
    original = jnp.where(selected, batch['encoder_target_tokens'],
                         batch['encoder_input_tokens'])
    originals.append(np.asarray(original[selected]))

    # ELECTRA: the discriminator's hidden states (its `hidden` head).
    def hidden(tokens, batch=batch):
      return model.apply(params, dict(batch, encoder_input_tokens=tokens),
                         head='hidden')

    moves.append(neighbour_sensitivity(hidden, original, position, 777,
                                       far_distance))
  out = {f'mlm_nll_at_{k}': s / max(n, 1) for k, (s, n) in sums.items()}
  out.update({f'count_{k}': n for k, (_, n) in sums.items()})
  out['far_distance'] = far_distance
  out['unigram_nll_of_targets'] = unigram_cross_entropy(
      train_tokens, np.concatenate(originals), config.model.vocab_size)
  for k in ('self', 'near', 'far'):
    out[f'hidden_move_{k}'] = float(np.mean([m[k] for m in moves]))
  return out


def main(argv):
  del argv
  from t5x_lite.tasks import dataset  # pylint: disable=g-import-not-at-top
  with open(os.path.join(_WORKDIR.value, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))
  steps = checkpoint_inspection.step_dirs(
      checkpoint_inspection.checkpoint_dir(_WORKDIR.value))
  if not steps:
    raise SystemExit(f'No checkpoints under {_WORKDIR.value}; train first.')
  step = max(steps) if _STEP.value < 0 else _STEP.value
  if step not in steps:
    raise SystemExit(f'No checkpoint for step {step} under {_WORKDIR.value}; '
                     f'steps there: {sorted(steps)}.')
  params = params_checkpoints.restore_params(steps[step])
  it = iter(dataset.get_dataset(config, 'validation', batch_size=32))
  batches = [next(it) for _ in range(_BATCHES.value)]
  train = iter(dataset.get_dataset(config, 'train', batch_size=32))
  train_tokens = np.concatenate([
      np.asarray(next(train)['encoder_target_tokens']).ravel()
      for _ in range(_TRAIN_BATCHES.value)])
  train_tokens = train_tokens[train_tokens > 0]  # padding is no word
  out = dict(step=step, workdir=_WORKDIR.value,
             **probe(config, params, batches, train_tokens, _POSITION.value,
                   _FAR.value))
  print(json.dumps(out))


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
