"""ELECTRA (Clark et al. 2020): replaced-token detection with a small MLM generator.

Selected with `config.objective.name='electra'` (or a task registered with
objective='electra', e.g. shakespeare_electra) on an encoder_only model:
15% of positions selected, 85% of those [MASK]ed, the rest kept
(tasks/preprocessors.mask_tokens). Settings: config.objective.electra.*
(`Options`). One step:

  1. the generator (an encoder whose hidden size, heads and MLP are
     `model.generator_size_fraction` of the discriminator's, depth
     `model.generator_layers_fraction` of it) reads the masked input and is
     trained with MLM on the selected positions (`generator_size_fraction`
     and `generator_layers_fraction` of the discriminator);
  2. at each selected position a replacement is sampled from the generator's
     softmax with the Gumbel-max trick on *stop-gradient* logits: the
     discriminator's loss never reaches the generator through the sample;
  3. the discriminator (the encoder_only network with its 'binary' head)
     reads the original text with the samples put in, and predicts per real
     token whether it was replaced. A sample equal to the original token
     counts as original (the ELECTRA paper's labelling);
  4. loss = MLM + `disc_weight` (50) x replaced-token loss, each
     a per-token mean (MLM over selected positions, RTD over real tokens).

Shared embeddings: the generator reads and writes through the
discriminator's token embedding [vocab, emb]. When its hidden size is smaller
it projects the embedding with a dense layer (`embed_project`, the paper's
`embeddings_project`), and its MLM head maps back to the embedding size before
the tied output, as ELECTRA-small's generator does.

Param tree:  discriminator/  the EncoderOnly tree (what fine-tuning keeps:
                             `discriminator_params(params)`)
             generator/      embed_project/, encoder/, mlm_dense/, mlm_norm/,
                             mlm_bias (no embedding of its own)

Sums (models.SUM_KEYS plus `<name>_num` / `<name>_den` pairs that
models.finalize_metrics turns into metrics):
  loss, num_tokens   the total loss, normalised per selected token (so the
                     train step's gradient is of MLM + 50 x RTD means; the
                     RTD sum is rescaled by selected/real tokens of its own
                     (micro)batch, so with train.microbatches > 1 the RTD
                     weight follows each microbatch's ratio, ~0.15 always);
  correct            generator MLM argmax hits -> `accuracy`;
  mlm_loss, disc_loss, disc_accuracy, disc_recall, disc_precision,
  disc_baseline_accuracy (predict "all original"), replaced_rate (replaced
  / real tokens), masked_replaced_rate (replaced / selected positions).
"""
from typing import Dict, Tuple

import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import flops
from t5x_lite import layers
from t5x_lite import lengths
from t5x_lite import losses
from t5x_lite import models
from t5x_lite import network
from t5x_lite import params_checkpoints
from t5x_lite import stacks
from t5x_lite.model_config import ConfigError, ModelConfig
from t5x_lite.objectives import registry
from t5x_lite.objectives import mlm


@dataclasses.dataclass(frozen=True)
class Options:
  """config.objective.electra.*"""
  generator_size_fraction: float = 0.25  # generator hidden size / discriminator's
  generator_layers_fraction: float = 1.0  # generator depth / discriminator's
  disc_weight: float = 50.0  # loss = MLM + disc_weight * replaced-token loss


def generator_config(cfg: ModelConfig, options: Options) -> ModelConfig:
  """The generator's dims: a fraction of the discriminator's (ELECTRA code:
  hidden, heads and FFN scale together; head_dim stays)."""
  frac = options.generator_size_fraction
  return cfg.replace(
      emb_dim=max(1, int(round(cfg.emb_dim * frac))),
      num_heads=max(1, int(round(cfg.num_heads * frac))),
      mlp_dim=max(1, int(round(cfg.mlp_dim * frac))),
      num_encoder_layers=max(1, int(round(
          cfg.num_encoder_layers * options.generator_layers_fraction))))


class _ProjectedEmbed(nn.Module):
  """The shared token embedding, projected to the generator's width."""
  embed: nn.Module  # the discriminator's layers.Embed (params live there)
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array) -> jax.Array:
    x = self.embed(ids)  # [batch, len, emb]
    if x.shape[-1] == self.features:
      return x
    # [batch, len, emb] -> [batch, len, gen_emb]
    return layers.Dense(self.features, kernel_axes=('embed', 'mlp'),
                        dtype=self.dtype, name='project')(x)


class Generator(nn.Module):
  """Small MLM encoder over the discriminator's embedding (tied logits)."""
  config: ModelConfig  # the generator's (generator_config)
  embed: nn.Module  # the discriminator's token embedder
  embed_dim: int  # the discriminator's emb_dim

  def setup(self):
    cfg = self.config
    dt = jnp.dtype(cfg.dtype)
    self.embed_project = _ProjectedEmbed(self.embed, cfg.emb_dim, dt)
    self.encoder = stacks.Encoder(cfg, self.embed_project)
    # Back to the embedding width, then the discriminator's table (tied).
    self.mlm_dense = layers.Dense(self.embed_dim, kernel_axes=('mlp', 'embed'),
                                  dtype=dt)
    self.mlm_norm = layers.RMSNorm(cfg.layer_norm_epsilon, dt)
    self.mlm_bias = self.param(
        'mlm_bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                 ('vocab',)),
        (cfg.vocab_size,), jnp.float32)

  def __call__(self, tokens, segment_ids=None, positions=None, *,
               enable_dropout=False):
    h = self.encoder(tokens, segment_ids, positions,
                     enable_dropout=enable_dropout)  # [batch, len, gen_emb]
    y = self.mlm_norm(jax.nn.gelu(self.mlm_dense(h), approximate=True))
    # [batch, len, emb] x [vocab, emb] -> [batch, len, vocab], as EncoderOnly.
    logits = self.embed.attend(y) * (self.embed_dim ** -0.5) + self.mlm_bias
    return nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))


class ElectraNetwork(nn.Module):
  """Discriminator (EncoderOnly) + generator sharing its token embedding.

  `__call__` is the discriminator (head 'binary' by default; every
  EncoderOnly head works); `generator_logits` the generator's MLM logits.
  """
  config: ModelConfig
  options: Options = Options()

  def setup(self):
    cfg = self.config
    self.discriminator = network.EncoderOnly(cfg)
    self.generator = Generator(generator_config(cfg, self.options),
                               self.discriminator.token_embedder, cfg.emb_dim)

  def __call__(self, encoder_input_tokens, encoder_segment_ids=None,
               encoder_positions=None, *, enable_dropout=False,
               head='binary'):
    if self.is_initializing():  # create the generator's params too
      self.generator(encoder_input_tokens, encoder_segment_ids,
                     encoder_positions)
    return self.discriminator(encoder_input_tokens, encoder_segment_ids,
                              encoder_positions, enable_dropout=enable_dropout,
                              head=head)

  def generator_logits(self, encoder_input_tokens, encoder_segment_ids=None,
                       encoder_positions=None, *, enable_dropout=False):
    return self.generator(encoder_input_tokens, encoder_segment_ids,
                          encoder_positions, enable_dropout=enable_dropout)


# ---- the objective's pieces (pure functions; tests check each) ----------------------


def gumbel_sample(rng: jax.Array, logits: jax.Array) -> jax.Array:
  """One token per position from softmax(logits) (Gumbel-max), no gradient.

  logits [batch, len, vocab] -> ids [batch, len] int32. stop_gradient makes
  the sample a constant for autodiff: the discriminator's loss does not
  train the generator (ELECTRA trains it by MLM only).
  """
  logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
  gumbel = jax.random.gumbel(rng, logits.shape, jnp.float32)
  return jnp.argmax(logits + gumbel, axis=-1).astype(jnp.int32)


def replace_tokens(original: jax.Array, selected: jax.Array,
                   sampled: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """(discriminator input, replaced labels), both [batch, len].

  The input is the original text with `sampled` at the selected positions;
  a position is labelled replaced (1) only when the token really changed,
  so a sample equal to the original counts as original.
  """
  disc_input = jnp.where(selected, sampled, original)
  replaced = (disc_input != original).astype(jnp.int32)
  return disc_input, replaced


def original_tokens(batch) -> jax.Array:
  """The uncorrupted text: targets where selected (they hold the originals),
  inputs elsewhere (whether or not a converter zeroes unselected targets)."""
  inputs = batch['encoder_input_tokens']
  targets = batch['encoder_target_tokens']
  selected = batch.get('encoder_loss_weights', targets > 0) > 0
  return jnp.where(selected, targets, inputs)


class ElectraModel(models.EncoderOnlyModel):
  """Generator MLM + weighted replaced-token detection (module doc)."""
  HEADS = ('binary',)  # `apply` gives the discriminator's per-token logits

  def __init__(self, module, cfg: ModelConfig, options: Options = Options(),
               **kw):
    if cfg.arch != 'encoder_only':
      raise ConfigError(
          f"objective 'electra' needs model.arch='encoder_only', got "
          f'{cfg.arch!r}; use configs/pretrain_electra.py or set '
          '--config.model.arch=encoder_only.')
    if not isinstance(module, ElectraNetwork):
      module = ElectraNetwork(cfg, options)
    super().__init__(module, cfg, head='binary', **kw)
    self.options = options
    self.disc_weight = float(options.disc_weight)

  @property
  def REQUIRED_FEATURES(self):  # pylint: disable=invalid-name
    return ('encoder_input_tokens', 'encoder_target_tokens',
            'encoder_loss_weights')

  def input_shapes(self, feature_lengths, batch_size):
    n = lengths.model_lengths(self.ARCH, feature_lengths)['encoder']
    return models._int_shapes(batch_size, {  # pylint: disable=protected-access
        'encoder_input_tokens': n, 'encoder_target_tokens': n,
        'encoder_loss_weights': n})

  def _init_kwargs(self):
    return {'head': 'binary'}

  def generator_logits(self, params, batch, *, dropout_rng=None,
                       enable_dropout=False) -> jax.Array:
    """[batch, len, vocab] float32 generator MLM logits on the masked input."""
    rngs = {'dropout': dropout_rng} if enable_dropout else None
    return self.module.apply(
        {'params': params}, **self._features(batch),
        enable_dropout=enable_dropout, rngs=rngs,
        method=ElectraNetwork.generator_logits)

  def forward(self, params, batch, rng, *, enable_dropout: bool = False
              ) -> Dict[str, jax.Array]:
    """Every intermediate of one ELECTRA pass (tests read these)."""
    if rng is None:  # eval: a fixed sampling key keeps evals comparable
      rng = jax.random.PRNGKey(0)
    sample_rng, gen_rng, disc_rng = jax.random.split(rng, 3)
    weights = batch['encoder_loss_weights'].astype(jnp.float32)
    selected = weights > 0
    original = original_tokens(batch)
    gen_logits = self.generator_logits(params, batch, dropout_rng=gen_rng,
                                       enable_dropout=enable_dropout)
    sampled = gumbel_sample(sample_rng, gen_logits)
    disc_input, replaced = replace_tokens(original, selected, sampled)
    disc_batch = dict(batch, encoder_input_tokens=disc_input)
    disc_logits = self.apply(params, disc_batch, dropout_rng=disc_rng,
                             enable_dropout=enable_dropout, head='binary')
    return dict(gen_logits=gen_logits, sampled=sampled, original=original,
                selected=selected, mlm_weights=weights, disc_input=disc_input,
                replaced=replaced, disc_logits=disc_logits,
                disc_weights=(original > 0).astype(jnp.float32))

  def loss_terms(self, params, batch, dropout_rng=None, *,
                 enable_dropout: bool = True):
    self._check_features(batch)
    f = self.forward(params, batch, dropout_rng,
                     enable_dropout=enable_dropout)
    targets = batch['encoder_target_tokens']
    mlm_sum, z_sum, n_mlm = losses.cross_entropy_with_z_loss(
        f['gen_logits'], targets, f['mlm_weights'], z_loss=self.z_loss,
        label_smoothing=self.label_smoothing, loss_normalizing_factor=None)
    correct, _ = losses.weighted_accuracy(f['gen_logits'], targets,
                                          f['mlm_weights'])
    disc_sum, n_disc = losses.binary_cross_entropy_with_logits(
        f['disc_logits'], f['replaced'], f['disc_weights'],
        loss_normalizing_factor=None)
    # The step divides the summed loss by num_tokens (= selected positions);
    # rescaling the RTD sum by n_mlm / n_disc makes that MLM mean + w x RTD
    # mean. (Counts carry no gradient.)
    ratio = n_mlm / jnp.maximum(n_disc, 1.0)
    total = mlm_sum + self.disc_weight * disc_sum * ratio
    dw = f['disc_weights']
    replaced = f['replaced'].astype(jnp.float32) * dw
    predicted = (f['disc_logits'] > 0).astype(jnp.float32)
    disc_correct = jnp.sum((predicted == replaced).astype(jnp.float32) * dw)
    caught = jnp.sum(predicted * replaced)  # replaced tokens flagged
    flagged = jnp.sum(predicted * dw)
    sums = {
        'loss': total, 'z_loss': z_sum, 'correct': correct, 'num_tokens': n_mlm,
        'mlm_loss_num': mlm_sum, 'mlm_loss_den': n_mlm,
        'disc_loss_num': disc_sum, 'disc_loss_den': n_disc,
        'disc_accuracy_num': disc_correct, 'disc_accuracy_den': n_disc,
        'disc_baseline_accuracy_num': n_disc - jnp.sum(replaced),
        'disc_baseline_accuracy_den': n_disc,
        'replaced_rate_num': jnp.sum(replaced), 'replaced_rate_den': n_disc,
        'masked_replaced_rate_num': jnp.sum(replaced),
        'masked_replaced_rate_den': n_mlm,
        # Of the replaced tokens, the share flagged; of the flagged, the
        # share really replaced (accuracy alone hides a timid detector).
        'disc_recall_num': caught, 'disc_recall_den': jnp.sum(replaced),
        'disc_precision_num': caught, 'disc_precision_den': flagged,
    }
    return total, sums

  def flops_per_step(self, feature_lengths, batch_size):
    """Generator trunk + discriminator trunk + the generator's vocab logits
    (at every position, as computed, at the embedding width), by
    flops.arch_flops_per_step's formula. The embedding projections and the
    binary head (<1% here) are left out."""
    lens = lengths.model_lengths(self.ARCH, feature_lengths)
    f = functools.partial(flops.arch_flops_per_step, lens=lens,
                          batch=batch_size)
    def trunk(m):
      return f(m) - f(m.replace(num_encoder_layers=0))
    logits = f(self.config.replace(num_encoder_layers=0))
    return trunk(generator_config(self.config, self.options)) + trunk(
        self.config) + logits

  def score_batch(self, params, batch):
    """[batch] generator log-likelihood of the originals at the selected
    positions (a masked-LM pseudo-likelihood)."""
    self._check_features(batch)
    logits = self.generator_logits(params, batch)
    ll = losses.token_log_likelihood(logits, batch['encoder_target_tokens'])
    return jnp.sum(ll * batch['encoder_loss_weights'].astype(jnp.float32), -1)


def discriminator_params(params):
  """The discriminator's EncoderOnly params: what fine-tuning starts from."""
  if 'discriminator' not in params:
    raise ValueError('These params hold no ELECTRA discriminator (keys '
                     f'{sorted(params)}); were they trained with '
                     "objective.name='electra'?")
  return params['discriminator']


def export_discriminator(checkpoint_path: str, out_dir: str) -> str:
  """Writes the discriminator of an ELECTRA checkpoint as a params-only
  checkpoint (params_checkpoints.save_params_only: params plus config.json when
  the run's is found) that
  `checkpoint.restore_from` reads into an encoder_only model (classifier
  fine-tuning: configs/finetune_classifier.py).

  Args:
    checkpoint_path: a step dir, checkpoints dir or workdir of an ELECTRA run.
    out_dir: must not exist yet.
  Returns:
    out_dir (absolute).
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir):
    raise FileExistsError(f'{out_dir} exists; pick a new output directory.')
  params = discriminator_params(
      params_checkpoints.restore_params(checkpoint_path))
  return params_checkpoints.save_params_only(
      out_dir, jax.tree.map(np.asarray, params),
      _plain_encoder_config(checkpoint_path))


def _plain_encoder_config(checkpoint_path: str):
  """The run's config (workdir/config.json, up to three levels above a step
  dir) as the plain encoder_only model the export is; None if not found."""
  where = os.path.abspath(checkpoint_path)
  for _ in range(4):
    cfg_path = os.path.join(where, 'config.json')
    if os.path.isfile(cfg_path):
      with open(cfg_path) as f:
        cfg = json.load(f)
      cfg.setdefault('objective', {})['name'] = ''
      return cfg
    where = os.path.dirname(where)
  return None


def _make_model(cfg, options, **kwargs):
  return ElectraModel(None, cfg, options, **kwargs)


def _check(config):
  o = config.objective.electra
  if not 0.0 < o.generator_size_fraction <= 1.0:
    raise ConfigError('objective.electra.generator_size_fraction must be in '
                      f'(0, 1], got {o.generator_size_fraction}.')
  if not 0.0 < o.generator_layers_fraction <= 1.0:
    raise ConfigError('objective.electra.generator_layers_fraction must be '
                      f'in (0, 1], got {o.generator_layers_fraction}.')


OBJECTIVE = registry.register(registry.Objective(
    name='electra',
    layout='masked_tokens',
    archs=('encoder_only',),
    summary='ELECTRA: generator MLM + replaced-token detection',
    # The masking of BERT without random tokens: 85% [MASK], 15% kept.
    preprocessors=lambda prep: [functools.partial(
        prep.mask_tokens, select_rate=mlm.SELECT_RATE, mask_rate=0.85,
        random_rate=0.0)],
    options=Options,
    make_model=_make_model,
    checkpoint_params=discriminator_params,
    metrics=('mlm_loss', 'disc_loss', 'disc_accuracy', 'disc_recall',
             'disc_precision', 'disc_baseline_accuracy', 'replaced_rate',
             'masked_replaced_rate'),
    recipe='configs/pretrain_electra.py:tiny',
    check=_check,
    renamed_keys={
        'model.generator_size_fraction':
            'objective.electra.generator_size_fraction',
        'model.generator_layers_fraction':
            'objective.electra.generator_layers_fraction',
        'model.electra_disc_weight': 'objective.electra.disc_weight',
    },
))
