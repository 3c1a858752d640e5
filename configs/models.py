"""Model sizes: one readable table (big_vision's `decode_variant` style).

T5.1.1 rows use the published dims (vocab 32128, gated GELU, untied logits);
their parameter counts are checked against the paper's by
`python -m t5x_lite.network --sizes` and tests/test_network.py.
Decoder-only and encoder-only rows reuse the same blocks.
"""

# name: (arch, emb_dim, num_heads, head_dim, mlp_dim, enc_layers, dec_layers)
SIZES = {
    # T5.1.1 encoder-decoder. tiny is for tests and the CPU default run.
    'tiny': ('encoder_decoder', 64, 4, 16, 128, 2, 2),
    'small': ('encoder_decoder', 512, 6, 64, 1024, 8, 8),  # 77M
    'base': ('encoder_decoder', 768, 12, 64, 2048, 12, 12),  # 248M
    'large': ('encoder_decoder', 1024, 16, 64, 2816, 24, 24),  # 783M
    'xl': ('encoder_decoder', 2048, 32, 64, 5120, 24, 24),  # 2.85B
    'xxl': ('encoder_decoder', 4096, 64, 64, 10240, 24, 24),  # 11.3B
    # Decoder-only (GPT-style causal LM, prefix LM, GLM), T5.1.1 blocks.
    'decoder_tiny': ('decoder_only', 64, 4, 16, 128, 0, 2),
    'decoder_small': ('decoder_only', 768, 12, 64, 2048, 0, 12),
    'decoder_base': ('decoder_only', 1024, 16, 64, 2816, 0, 24),
    'decoder_large': ('decoder_only', 2048, 32, 64, 5120, 0, 24),
    # Encoder-only (BERT MLM, ELECTRA discriminator, classification).
    'encoder_tiny': ('encoder_only', 64, 4, 16, 128, 2, 0),
    'encoder_small': ('encoder_only', 256, 4, 64, 1024, 12, 0),  # ELECTRA-small dims
    'encoder_base': ('encoder_only', 768, 12, 64, 2048, 12, 0),
    'encoder_large': ('encoder_only', 1024, 16, 64, 2816, 24, 0),
}

# Published T5.1.1 parameter counts (vocab 32128), for the 1% check.
PUBLISHED_PARAMS = {
    'small': 77e6,
    'base': 248e6,
    'large': 783e6,
    'xl': 2.85e9,
    # The issue quoted 11.3B, the original T5-11B's count (d_ff 65536, 128
    # heads). T5.1.1-XXL (d_ff 10240, 64 heads) has 11,135,332,352 params: the
    # exact count of HF's google/t5-v1_1-xxl config built on the meta device.
    'xxl': 11.14e9,
}


def apply_size(config, name):
  """Writes size `name`'s dims into `config.model`; returns config."""
  if name not in SIZES:
    raise ValueError(
        f'Unknown model size {name!r}; known sizes: {", ".join(SIZES)}. '
        'Add a row to configs/models.py SIZES for a new one.')
  arch, emb, heads, head_dim, mlp, enc, dec = SIZES[name]
  m = config.model
  m.size = name
  m.arch = arch
  m.emb_dim = emb
  m.num_heads = heads
  m.head_dim = head_dim
  m.mlp_dim = mlp
  m.num_encoder_layers = enc
  m.num_decoder_layers = dec
  return config
