r"""Next-line retrieval with sentence embeddings: recall@1 and MRR.

    python scripts/retrieval_eval.py --checkpoint=runs/contrastive/simcse
    python scripts/retrieval_eval.py --checkpoint=runs/contrastive/mlm
    python scripts/retrieval_eval.py --checkpoint= --init_seed=0   # untrained

Each of --num_queries lines of the held-out plays (the validation split of
the next_line corpus: `line<TAB>next line`) ranks its true next line among
--num_candidates candidates: the true one and N-1 next lines of other pairs,
drawn with --seed, by the cosine of their embeddings. The embedding of a
line is objectives.contrastive.embed's: the mean over its real tokens of the
encoder output, no dropout, the line cut to --max_length tokens (EOS
included) as the training rows are. Any encoder_only checkpoint works (its
model fields come from the config saved with it; an objective's
checkpoint_params picks the encoder, e.g. ELECTRA's discriminator); an empty
--checkpoint embeds with freshly initialised params (--init_seed).

Pairs whose next line occurs more than once in the split ('" " "', 'Exeunt.')
are left out, as are candidates with the true line's text, so every query has
exactly one right answer. Chance: recall@1 = 1/N, MRR = H_N / N.
Prints one JSON line; --out also writes it to a file.
"""
import json
import os
import sys

from absl import app
from absl import flags
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

from t5x_lite import checkpoints
from t5x_lite import cli
from t5x_lite import model_loading
from t5x_lite import network
from t5x_lite import objectives
from t5x_lite import params_checkpoints
from t5x_lite import partitioning
from t5x_lite.model_config import ConfigError, ModelConfig
from t5x_lite.objectives import contrastive
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
flags.DEFINE_string('checkpoint', '', 'a workdir, checkpoints dir or step dir '
                    'of an encoder_only run; empty: untrained params')
flags.DEFINE_string('config', 'configs/pretrain_simcse.py:tiny',
                    'config whose model fields an untrained encoder takes (a '
                    "checkpoint's own saved config wins for its fields)")
flags.DEFINE_integer('init_seed', 0, 'params seed of the untrained encoder')
flags.DEFINE_integer('num_candidates', 10, 'N: the true next line + N-1 others')
flags.DEFINE_integer('num_queries', 1000, 'Q: queries drawn from the split')
flags.DEFINE_integer('seed', 0, 'seed of the queries and their candidates')
flags.DEFINE_integer('max_length', 64, 'tokens per line (EOS included)')
flags.DEFINE_string('split', 'validation', 'split of the next_line corpus')
flags.DEFINE_string('out', '', 'also write the JSON line here')


# ---- the evaluation (pure; tests check these) --------------------------------


def unambiguous_pairs(pairs):
  """The (line, next) pairs whose next line occurs once in `pairs`."""
  counts = {}
  for _, nxt in pairs:
    counts[nxt] = counts.get(nxt, 0) + 1
  return [(line, nxt) for line, nxt in pairs if counts[nxt] == 1 and line]


def sample_queries(num_pairs, num_queries, num_candidates, seed):
  """(query ids [Q], candidate ids [Q, N]) into the pairs; column 0 is the
  query's own pair (its true next line), the rest distinct other pairs."""
  if num_candidates < 2 or num_candidates > num_pairs:
    raise ConfigError(f'--num_candidates={num_candidates} must be in [2, '
                      f'{num_pairs}] (the pairs of the split).')
  rng = np.random.default_rng(seed)
  queries = rng.choice(num_pairs, size=min(num_queries, num_pairs),
                       replace=False)
  cands = np.empty((len(queries), num_candidates), np.int64)
  for i, q in enumerate(queries):
    others = rng.choice(num_pairs - 1, size=num_candidates - 1, replace=False)
    cands[i, 0] = q
    cands[i, 1:] = others + (others >= q)  # skip the query's own pair
  return queries, cands


def rank_metrics(scores):
  """scores [Q, N] (column 0 the true candidate) -> recall@1, MRR, and the
  ranks (1 = best; ties count against the true one)."""
  scores = np.asarray(scores, np.float64)
  ranks = 1 + np.sum(scores[:, 1:] >= scores[:, :1], axis=1)
  return {'recall_at_1': float(np.mean(ranks == 1)),
          'mrr': float(np.mean(1.0 / ranks)), 'ranks': ranks}


def chance(num_candidates):
  """recall@1 and MRR of a random ranking among N."""
  n = num_candidates
  return {'recall_at_1': 1.0 / n,
          'mrr': float(np.mean(1.0 / np.arange(1, n + 1)))}


def retrieval_scores(query_emb, cand_emb, queries, cands):
  """[Q, N] cosine of each query line's embedding and its candidates'."""
  q = query_emb / np.maximum(np.linalg.norm(query_emb, axis=-1,
                                            keepdims=True), 1e-12)
  c = cand_emb / np.maximum(np.linalg.norm(cand_emb, axis=-1, keepdims=True),
                            1e-12)
  # [Q, dim] x [Q, N, dim] -> [Q, N]
  return np.einsum('qd,qnd->qn', q[queries], c[cands])


# ---- encoder, tokens, embeddings ---------------------------------------------


def load_encoder(config, checkpoint, init_seed):
  """(ModelConfig, params, description) of the encoder to embed with."""
  if checkpoint:
    kind, where, step = model_loading.resolve_checkpoint(checkpoint)
    stored = model_loading.stored_config(kind, where)
    model_loading.apply_checkpoint_model(config, stored)
    params = params_checkpoints.restore_params(checkpoint)
    name = config.objective.name
    obj = objectives.get(name) if name else None
    if obj is not None and obj.checkpoint_params is not None:
      params = obj.checkpoint_params(params)
    what = f'{where} (step {step}, objective {name or "-"})'
  cfg = ModelConfig.from_config(config.model)
  if cfg.arch != 'encoder_only':
    raise ConfigError(f'retrieval embeds with an encoder_only model; this one '
                      f'is {cfg.arch!r} (pass an encoder_only --checkpoint).')
  if not checkpoint:
    tokens = jnp.ones((1, 8), jnp.int32)
    params = network.EncoderOnly(cfg).init(
        jax.random.PRNGKey(init_seed), tokens)['params']
    params = partitioning.unbox(params)
    what = f'untrained (init seed {init_seed})'
  return cfg, params, what


def tokenize(texts, max_length):
  """[len(texts), max_length] int32: each text's ids cut to max_length - 1,
  then EOS, then padding (the training rows' layout)."""
  from t5x_lite.tasks import vocabularies  # pylint: disable=g-import-not-at-top
  vocab = vocabularies.default_vocabulary()
  out = np.zeros((len(texts), max_length), np.int32)
  for i, text in enumerate(texts):
    ids = list(vocab.encode(text))[:max_length - 1] + [vocab.eos_id]
    out[i, :len(ids)] = ids
  return out


def embed_all(cfg, params, tokens, batch_size=256):
  """[rows, emb] float32 deterministic embeddings of `tokens` [rows, len]."""
  module = network.EncoderOnly(cfg)

  @jax.jit
  def _embed(params, t):
    hidden = module.apply({'params': params}, t, head='hidden')
    return contrastive.mean_pool(hidden, t)

  rows = len(tokens)
  pad = (-rows) % batch_size
  tokens = np.concatenate([tokens, np.zeros((pad, tokens.shape[1]),
                                            np.int32)])
  out = [np.asarray(_embed(params, tokens[i:i + batch_size]))
         for i in range(0, len(tokens), batch_size)]
  return np.concatenate(out)[:rows]


def read_pairs(split):
  from t5x_lite.tasks import corpora  # pylint: disable=g-import-not-at-top
  corpora.require('next_line')
  with open(corpora.split_path('next_line', split)) as f:
    rows = [line.rstrip('\n').split('\t') for line in f]
  return [(r[0], r[1]) for r in rows if len(r) >= 2]


def evaluate(config, checkpoint, *, init_seed=0, num_candidates=10,
             num_queries=1000, seed=0, max_length=64, split='validation'):
  """The JSON-able result of one retrieval evaluation (module doc)."""
  cfg, params, what = load_encoder(config, checkpoint, init_seed)
  pairs = unambiguous_pairs(read_pairs(split))
  queries, cands = sample_queries(len(pairs), num_queries, num_candidates,
                                  seed)
  used = sorted(set(queries.tolist()) | set(cands.ravel().tolist()))
  index = {p: i for i, p in enumerate(used)}
  lines = tokenize([pairs[p][0] for p in used], max_length)
  nexts = tokenize([pairs[p][1] for p in used], max_length)
  q_emb = embed_all(cfg, params, lines)
  c_emb = embed_all(cfg, params, nexts)
  remap = np.vectorize(index.get)
  scores = retrieval_scores(q_emb, c_emb, remap(queries), remap(cands))
  m = rank_metrics(scores)
  return {'encoder': what, 'split': split, 'pairs': len(pairs),
          'num_queries': int(len(queries)), 'num_candidates': num_candidates,
          'seed': seed, 'max_length': max_length,
          'recall_at_1': round(m['recall_at_1'], 4), 'mrr': round(m['mrr'], 4),
          'chance': {k: round(v, 4) for k, v in chance(num_candidates).items()}}


def main(argv):
  del argv
  try:
    config = cli.config_from_file(FLAGS.config)
    result = evaluate(config, FLAGS.checkpoint, init_seed=FLAGS.init_seed,
                      num_candidates=FLAGS.num_candidates,
                      num_queries=FLAGS.num_queries, seed=FLAGS.seed,
                      max_length=FLAGS.max_length, split=FLAGS.split)
  except (ConfigError, checkpoints.CheckpointError) as e:
    cli.fail(f'retrieval_eval: {e}')
  line = json.dumps(result)
  print(line)
  if FLAGS.out:
    with open(FLAGS.out, 'w') as f:
      f.write(line + '\n')


if __name__ == '__main__':
  app.run(main)
