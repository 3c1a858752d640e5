"""BERT's pretraining: masked LM + next-sentence prediction (Devlin et al. 2019).

Selected with a sentence-pair task (shakespeare_mlm_nsp,
tasks/sentence_pairs.py) or `config.objective.name='mlm_nsp'` on an
encoder_only model with `model.type_vocab_size=2`
(configs/pretrain_bert.py:nsp). A row is one pair, `[CLS] A [SEP] B [SEP]`:
B is A's next line (IsNext, 1) or a line from elsewhere (NotNext, 0), half
and half; BERT's masking (objectives/mlm.py's 15% / 80-10-10) over A and B,
never [CLS] or [SEP]; token types 0 on `[CLS] A [SEP]`, 1 on `B [SEP]`.

The network is EncoderOnly with its pair heads (network.py, type_vocab_size
> 0): segment embeddings `token_type_embedder/` summed with the token
embeddings, and `nsp_head/` (2 logits) over the tanh `pooler/` of [CLS]
(the pooler the classifier fine-tunes from). One encoder pass gives both
heads' logits.

Loss = MLM mean (per selected token) + `nsp_weight` x NSP mean (per pair):
the train step divides the summed loss by num_tokens (the selected
positions), so the NSP sum is rescaled by selected tokens / pairs of its own
(micro)batch, as ELECTRA rescales its detector loss.

Sums (models.SUM_KEYS plus `<name>_num` / `<name>_den` pairs):
  correct -> accuracy     MLM argmax hits per selected token
  mlm_loss, nsp_loss      each per its own unit (token, pair)
  nsp_accuracy            IsNext argmax hits per pair (chance: 50%)
  is_next_rate            the share of IsNext labels (the majority baseline
                          is max(rate, 1 - rate))

Fine-tuning (configs/finetune_classifier.py) restores the whole tree when
the classifier is built with the same `model.type_vocab_size=2`: its tree
then has token_type_embedder/ and nsp_head/ too (single-segment inputs are
all type 0; the NSP head is kept, unused).
"""
import dataclasses
import math

import jax
import jax.numpy as jnp

from t5x_lite import lengths
from t5x_lite import losses
from t5x_lite import models
from t5x_lite import network
from t5x_lite.model_config import ConfigError, ModelConfig
from t5x_lite.objectives import mlm
from t5x_lite.objectives import registry

NAME = 'mlm_nsp'
# network.EncoderOnly's pair head: (MLM logits, NSP logits) from one pass.
HEAD = 'vocab_nsp'


@dataclasses.dataclass(frozen=True)
class Options:
  """config.objective.mlm_nsp.*"""
  nsp_weight: float = 1.0  # loss = MLM mean + nsp_weight * NSP mean
  # Vocabulary logits only at the first K selected positions of a row
  # (BERT's max_predictions_per_seq): -1 = ceil(15% of the row) + 1, more
  # than the pair task ever selects; 0 = at every position.
  max_predictions: int = -1


def _require_pairs(cfg: ModelConfig):
  if cfg.arch != 'encoder_only':
    raise ConfigError(
        f"objective '{NAME}' needs model.arch='encoder_only', got "
        f'{cfg.arch!r}; use configs/pretrain_bert.py:nsp.')
  if cfg.type_vocab_size < 2:
    raise ConfigError(
        f"objective '{NAME}' needs segment embeddings for A and B: "
        f'model.type_vocab_size={cfg.type_vocab_size}; set '
        '--config.model.type_vocab_size=2 (configs/pretrain_bert.py:nsp does).')


def max_predictions(length: int, option: int = -1) -> int:
  """K, BERT's max_predictions_per_seq, for rows of `length` (Options).
  The default is more than the positions the pair task selects in a row
  (round(15% of its text tokens))."""
  if option == 0:
    return length
  if option < 0:
    return min(length, math.ceil(mlm.SELECT_RATE * length) + 1)
  return min(length, option)


def gather_selected(targets, weights, k):
  """(positions, targets, weights) [batch, K] of a row's selected
  positions (weight > 0) first: the MLM loss only needs the vocabulary
  logits there (BERT's masked_lm_positions), a 6x smaller projection at
  15%. Fillers carry weight 0; a row with more than K selected positions
  scores its first K only."""
  _, positions = jax.lax.top_k(weights, k)  # [batch, K]; ties: lowest index
  take = lambda x: jnp.take_along_axis(x, positions, axis=1)
  return positions, take(targets), take(weights)


class NspModel(models.EncoderOnlyModel):
  """MLM + next-sentence prediction on sentence pairs (module doc)."""
  HEADS = ('vocab',)  # `apply` gives the MLM logits, as an MLM model's

  def __init__(self, module, cfg: ModelConfig, options: Options = Options(),
               **kw):
    _require_pairs(cfg)
    super().__init__(module or network.build(cfg), cfg, head='vocab', **kw)
    self.nsp_weight = float(options.nsp_weight)
    self.max_predictions = int(options.max_predictions)

  @property
  def REQUIRED_FEATURES(self):  # pylint: disable=invalid-name
    return ('encoder_input_tokens', 'encoder_target_tokens',
            'encoder_loss_weights', 'encoder_token_type_ids',
            'is_next_labels')

  def input_shapes(self, feature_lengths, batch_size):
    n = lengths.model_lengths(self.ARCH, feature_lengths)['encoder']
    shapes = models._int_shapes(batch_size, {  # pylint: disable=protected-access
        'encoder_input_tokens': n, 'encoder_target_tokens': n,
        'encoder_loss_weights': n, 'encoder_token_type_ids': n})
    shapes['is_next_labels'] = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    return shapes

  def logits(self, params, batch, *, dropout_rng=None, enable_dropout=False):
    """(MLM [batch, len, vocab], NSP [batch, 2]) float32 logits."""
    return self.apply(params, batch, dropout_rng=dropout_rng,
                      enable_dropout=enable_dropout, head=HEAD)

  def loss_terms(self, params, batch, dropout_rng=None, *,
                 enable_dropout: bool = True):
    self._check_features(batch)
    targets = batch['encoder_target_tokens']
    weights = batch['encoder_loss_weights'].astype(jnp.float32)
    positions, k = None, max_predictions(targets.shape[1],
                                         self.max_predictions)
    if k < targets.shape[1]:
      positions, targets, weights = gather_selected(targets, weights, k)
    # mlm_logits [batch, K (or len), vocab]; nsp_logits [batch, 2].
    mlm_logits, nsp_logits = self.apply(
        params, batch, dropout_rng=dropout_rng, enable_dropout=enable_dropout,
        head=HEAD, mlm_positions=positions)
    mlm_sum, z_sum, n_mlm = losses.cross_entropy_with_z_loss(
        mlm_logits, targets, weights, z_loss=self.z_loss,
        label_smoothing=self.label_smoothing, loss_normalizing_factor=None)
    correct, _ = losses.weighted_accuracy(mlm_logits, targets, weights)
    # One "token" per row: [batch, 1, 2] against [batch, 1]. No z-loss (it
    # keeps a large softmax's normaliser in range; two logits need none).
    is_next = batch['is_next_labels'].reshape(-1, 1).astype(jnp.int32)
    rows = jnp.ones(is_next.shape, jnp.float32)
    nsp_sum, _, n_rows = losses.cross_entropy_with_z_loss(
        nsp_logits[:, None, :], is_next, rows, z_loss=0.0,
        loss_normalizing_factor=None)
    nsp_correct, _ = losses.weighted_accuracy(nsp_logits[:, None, :],
                                              is_next, rows)
    # The step divides by num_tokens (= selected positions); n_mlm / n_rows
    # turns the NSP sum into its per-pair mean after that division.
    total = mlm_sum + self.nsp_weight * nsp_sum * (
        n_mlm / jnp.maximum(n_rows, 1.0))
    sums = {
        'loss': total, 'z_loss': z_sum, 'correct': correct,
        'num_tokens': n_mlm,
        'mlm_loss_num': mlm_sum, 'mlm_loss_den': n_mlm,
        'nsp_loss_num': nsp_sum, 'nsp_loss_den': n_rows,
        'nsp_accuracy_num': nsp_correct, 'nsp_accuracy_den': n_rows,
        'is_next_rate_num': jnp.sum(is_next.astype(jnp.float32)),
        'is_next_rate_den': n_rows,
    }
    return total, sums


def _make_model(cfg, options, **kwargs):
  return NspModel(None, cfg, options or Options(), **kwargs)


def _check(config):
  _require_pairs(ModelConfig.from_config(config.model))
  if config.objective.mlm_nsp.max_predictions < -1:
    raise ConfigError('objective.mlm_nsp.max_predictions must be -1 (auto), '
                      f'0 (all) or > 0, got '
                      f'{config.objective.mlm_nsp.max_predictions}.')
  if config.objective.mlm_nsp.nsp_weight < 0:
    raise ConfigError('objective.mlm_nsp.nsp_weight must be >= 0, got '
                      f'{config.objective.mlm_nsp.nsp_weight}.')


OBJECTIVE = registry.register(registry.Objective(
    name=NAME,
    layout='masked_token_pairs',
    archs=('encoder_only',),
    summary='BERT MLM + next-sentence prediction on [CLS] A [SEP] B [SEP]',
    # Its task is a pair source (tasks/sentence_pairs.register_pair_task),
    # not a text stream: no steps for register_pretraining.
    preprocessors=None,
    options=Options,
    make_model=_make_model,
    metrics=('mlm_loss', 'nsp_loss', 'nsp_accuracy', 'is_next_rate'),
    recipe='configs/pretrain_bert.py:nsp',
    check=_check,
))
