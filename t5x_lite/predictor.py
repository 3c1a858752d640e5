"""Jitted decode and score over a model and its (sharded) params.

    predictor, info = Predictor.from_checkpoint(config, path)
    tokens, scores = predictor.predict(batch)   # [batch, len], [batch]
    log_likelihood = predictor.score(batch)     # [batch]

Behind evaluation.py (seqio metrics, samples, teacher-forced loss) and
inference.py (infer.py's decode / score of text). Batches are host numpy;
`put` places one on the mesh (rows sharded over the batch axes).
"""
from typing import Any, Optional, Tuple

import jax
import numpy as np

from t5x_lite import generation
from t5x_lite import model_loading
from t5x_lite import partitioning
from t5x_lite import trainer


class Predictor:
  """Jitted decode / score over a model and its (sharded) params."""

  def __init__(self, model, params, settings: generation.DecodeSettings, *,
               mesh=None, rules: Tuple[Tuple[str, Any], ...] = (),
               param_shardings: Optional[Any] = None):
    """settings: DecodeSettings.from_config(config.decoding); mesh, rules
    (partitioning.logical_rules(config.mesh.rules)) and param_shardings:
    where the params live (all three, or none: unsharded jit)."""
    self.model = model
    self.params = params
    self.settings = settings
    self.mesh = mesh
    self.rules = rules
    self.param_shardings = param_shardings
    self.sharded = mesh is not None and param_shardings is not None
    if self.sharded:
      self.batch_sharding = partitioning.batch_sharding(mesh, rules)
      self.num_shards = partitioning.num_batch_shards(mesh, rules)
      self._score = trainer.make_score_step(model, mesh, rules,
                                            param_shardings,
                                            self.batch_sharding)
    else:
      self.batch_sharding, self.num_shards = None, 1
      self._score = jax.jit(model.score_batch)

  @classmethod
  def from_checkpoint(cls, config, path: str) -> Tuple['Predictor', dict]:
    """(predictor, info) over the params at `path` (model_loading.load_model:
    structural config.model fields from the checkpoint, params sharded)."""
    model, params, info = model_loading.load_model(config, path)
    return cls(model, params,
               generation.DecodeSettings.from_config(config.decoding),
               mesh=info['mesh'],
               rules=partitioning.logical_rules(config.mesh.rules),
               param_shardings=info['param_shardings']), info

  def put(self, batch):
    """Host numpy batch -> what the jitted steps take."""
    if self.sharded:
      return partitioning.shard_batch(batch, self.batch_sharding)
    return batch

  def eval_step(self):
    """Jitted `eval_step(params, placed batch) -> sums` (models.SUM_KEYS)
    over this predictor's mesh (evaluation.teacher_forced sums them)."""
    if self.sharded:
      return trainer.make_eval_step(self.model, self.mesh, self.rules,
                                    self.param_shardings, self.batch_sharding)
    return jax.jit(self.model.eval_fn)

  def predict(self, batch, rng=None, bidirectional_prompt=None
              ) -> Tuple[np.ndarray, np.ndarray]:
    """(tokens [batch, len], scores [batch]) as host numpy.

    bidirectional_prompt: decoder-only models only (generation.predict_batch):
    whether the prompt attends bidirectionally; None: when the batch marks
    one with decoder_causal_attention.
    """
    tokens, scores = generation.predict_batch(
        self.model, self.params, batch, self.settings, rng,
        bidirectional_prompt=bidirectional_prompt)
    return np.asarray(tokens), np.asarray(scores)

  def score(self, batch) -> np.ndarray:
    """[batch] log-likelihood of the batch's targets (model.score_batch)."""
    return np.asarray(self._score(self.params, self.put(batch)))
