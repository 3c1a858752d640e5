"""A new objective in one user module: BART's token deletion (Lewis et al. 2020).

The inputs are a chunk of text with 15% of its tokens deleted at random; the
targets are the whole chunk, so the model must find what is missing and
where. Nothing in t5x_lite/ is edited: this module registers the objective
and a task over the shipped corpus, and every entrypoint takes it with
--task_module (README, "Add an objective"):

    python -m t5x_lite.train --config=configs/local_tiny.py \
        --task_module=examples.token_deletion \
        --config.task.name=shakespeare_token_deletion --workdir=/tmp/td

It trains the arch's own model (encoder-decoder cross entropy), so it needs
no `make_model`; an objective with a loss of its own passes one
(t5x_lite/objectives/electra.py is the worked example).
"""
import functools

import seqio
import tensorflow as tf

from t5x_lite import objectives
from t5x_lite.tasks import builtin
from t5x_lite.tasks import preprocessors as prep
from t5x_lite.tasks import registry

DELETE_RATE = 0.15


def delete_tokens(dataset, sequence_length, output_features,
                  rate=DELETE_RATE):
  """Chunks of targets-length tokens; inputs = the chunk with each token
  dropped with probability `rate` (seeded, stateless)."""
  del output_features
  # -1: room for the EOS that append_eos_after_trim adds.
  length = min(sequence_length['inputs'], sequence_length['targets']) - 1

  @seqio.map_over_dataset(num_seeds=1)
  @prep.graph_fn
  def _delete(x, seed):
    tokens = x['targets']
    keep = tf.random.stateless_uniform(tf.shape(tokens), seed) >= rate
    return {'inputs': tf.boolean_mask(tokens, keep), 'targets': tokens}

  return _delete(prep.concat_and_split(dataset, length, min_tokens=2))


OBJECTIVE = objectives.register(objectives.Objective(
    name='token_deletion',
    layout='inputs_targets',
    archs=('encoder_decoder',),
    summary='BART token deletion: 15% of tokens deleted, rebuild the text',
    preprocessors=lambda p: [functools.partial(delete_tokens),
                             p.append_eos_after_trim],
    recipe='configs/local_tiny.py',
))

registry.register_pretraining('shakespeare_token_deletion',
                              builtin.CorpusSource('shakespeare'),
                              OBJECTIVE.name)
