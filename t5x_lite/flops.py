"""Analytic model FLOPs of one training step (matmuls only), for MFU.

The formula of the shared T5 FLOPs reference (so MFU is comparable across
systems), generalised to decoder-only and encoder-only models: per token and
layer, 2 FLOPs per multiply-add of the q/k/v/o projections, the (gated) MLP and
the QK^T / AV products over the full length (causal masking not discounted),
plus the output logits; x3 for forward + backward.

`arch_flops_per_step` is one network's; a model's `flops_per_step`
(t5x_lite/models.py) calls it, and an objective whose model runs more than
one network (ELECTRA's generator + discriminator) adds its parts up.
"""
from typing import Mapping

from t5x_lite.model_config import ModelConfig


def _layer_macs_per_token(d_model, d_ff, inner, num_mlp_in):
  attn_proj = 4 * d_model * inner  # q, k, v, o
  ffn = (num_mlp_in + 1) * d_model * d_ff  # wi (one per activation) + wo
  return attn_proj, ffn


def arch_flops_per_step(m: ModelConfig, lens: Mapping[str, int],
                        batch: int) -> float:
  """Training FLOPs of one step of network `m` on `batch` rows.

  lens: the network's sequence lengths (t5x_lite.lengths.model_lengths).
  """
  inner = m.num_heads * m.head_dim
  attn_proj, ffn = _layer_macs_per_token(m.emb_dim, m.mlp_dim, inner,
                                         len(m.mlp_activations))
  f = 0  # forward multiply-adds x 2
  if m.arch in ('encoder_decoder', 'encoder_only'):
    enc_len = lens['encoder']
    enc_tok = batch * enc_len
    layers = m.num_encoder_layers
    f += enc_tok * layers * (attn_proj + ffn) * 2
    f += enc_tok * layers * 2 * (enc_len * inner) * 2  # QK^T and AV
  if m.arch == 'encoder_decoder':
    dec_len = lens['decoder']
    dec_tok = batch * dec_len
    layers = m.num_decoder_layers
    # self-attn, cross-attn (q, o on decoder tokens; k, v on encoder tokens)
    f += dec_tok * layers * (attn_proj + 2 * m.emb_dim * inner + ffn) * 2
    f += enc_tok * layers * (2 * m.emb_dim * inner) * 2
    f += dec_tok * layers * 2 * (dec_len * inner) * 2  # self-attn scores
    f += dec_tok * layers * 2 * (enc_len * inner) * 2  # cross-attn scores
    f += dec_tok * m.emb_dim * m.vocab_size * 2  # logits
  elif m.arch == 'decoder_only':
    dec_len = lens['decoder']
    dec_tok = batch * dec_len
    layers = m.num_decoder_layers
    f += dec_tok * layers * (attn_proj + ffn) * 2
    f += dec_tok * layers * 2 * (dec_len * inner) * 2
    f += dec_tok * m.emb_dim * m.vocab_size * 2
  else:  # encoder_only: vocabulary logits at every position
    f += enc_tok * m.emb_dim * m.vocab_size * 2
  return float(3 * f)
