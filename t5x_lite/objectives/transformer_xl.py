"""Transformer-XL segment recurrence for a decoder-only model (Dai et al. 2019).

Documents joined with EOS are cut into train.batch_size contiguous streams;
step k reads the k-th segment of every stream (tasks/streams.py), so a batch
row continues the same row of the previous step. Every layer attends over
its cached inputs of the previous model.memory_length positions (no gradient)
plus the current segment, causally, with T5's relative position bias over
the extended key range (t5x_lite/memory.py, stacks.DecoderLayer). The
memory rides in the train state (trainer.MemoryTrainState), so checkpoints
hold it and a resumed run continues bit-identically.

With model.memory_length=0 the same streams train the plain decoder-only
model (the reference the memory is measured against). Evaluation reports the
validation perplexity with the memory carried and with it cleared at every
segment (evaluation.stream_perplexities), at the same segment length.
"""
import jax
import jax.numpy as jnp

from t5x_lite import losses
from t5x_lite import memory as memory_lib
from t5x_lite import models
from t5x_lite.model_config import ConfigError
from t5x_lite.objectives import registry


class TransformerXLModel(models.DecoderOnlyModel):
  """DecoderOnlyModel that threads a memory through its steps."""

  @property
  def memory_length(self) -> int:
    return int(self.config.memory_length)

  def _memory_dims(self, batch_size):
    cfg = self.config
    return (cfg.num_decoder_layers, int(batch_size), self.memory_length,
            cfg.emb_dim, jnp.dtype(cfg.dtype))

  def init_memory(self, batch_size: int) -> memory_lib.Memory:
    return memory_lib.empty(*self._memory_dims(batch_size))

  def abstract_memory(self, batch_size: int) -> memory_lib.Memory:
    return memory_lib.abstract(*self._memory_dims(batch_size))

  def apply_with_memory(self, params, batch, memory, *, dropout_rng=None,
                        enable_dropout=False):
    """(logits [batch, seg, vocab], next memory); rows whose stream restarts
    here (batch 'memory_reset') start from an empty memory."""
    memory = memory_lib.reset_rows(memory, batch.get(memory_lib.RESET_FEATURE))
    return self.apply(params, batch, dropout_rng=dropout_rng,
                      enable_dropout=enable_dropout, memory=memory)

  def memory_loss_terms(self, params, batch, memory, dropout_rng=None, *,
                        enable_dropout=True):
    """(summed loss, (sums over models.SUM_KEYS, next memory))."""
    self._check_features(batch)
    logits, new_memory = self.apply_with_memory(
        params, batch, memory, dropout_rng=dropout_rng,
        enable_dropout=enable_dropout)
    targets, weights = self._targets_and_weights(batch)
    loss, z_loss, n = losses.cross_entropy_with_z_loss(
        logits, targets, weights, z_loss=self.z_loss,
        label_smoothing=self.label_smoothing, loss_normalizing_factor=None)
    correct, _ = losses.weighted_accuracy(logits, targets, weights)
    sums = {'loss': loss, 'z_loss': z_loss, 'correct': correct,
            'num_tokens': n}
    return loss, (sums, jax.lax.stop_gradient(new_memory))


def _make_model(cfg, options, **kwargs):
  del options
  from t5x_lite import network  # pylint: disable=g-import-not-at-top
  return TransformerXLModel(network.build(cfg), cfg, **kwargs)


def _preprocessors(prep):
  # The seqio form of the task (decoded samples, data checks): fixed chunks
  # as causal LM has. Training and eval read tasks/streams.py's streams.
  return [prep.concat_and_chunk]


def _check(config):
  m = config.model
  if int(m.get('memory_length', 0)) < 0:
    raise ConfigError('model.memory_length must be >= 0 (0 turns the '
                      'Transformer-XL memory off).')
  if int(m.get('memory_length', 0)) and int(config.train.microbatches) != 1:
    raise ConfigError(
        'objective transformer_xl carries its memory from one whole batch to '
        'the next: set train.microbatches=1 (lower train.batch_size to fit '
        'memory).')
  if m.arch != 'decoder_only':
    raise ConfigError('objective transformer_xl trains model.arch='
                      "'decoder_only'.")


OBJECTIVE = registry.register(registry.Objective(
    name='transformer_xl',
    layout='targets',
    archs=('decoder_only',),
    summary='Transformer-XL segment recurrence over contiguous streams',
    preprocessors=_preprocessors,
    task_features=('targets',),
    add_eos=False,
    make_model=_make_model,
    metrics=('ppl_with_memory', 'ppl_no_memory'),
    recipe='configs/pretrain_txl.py:tiny',
    check=_check,
))
