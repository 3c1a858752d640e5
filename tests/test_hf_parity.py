"""Parity with Hugging Face T5: import a random tiny HF model and compare
logits and encoder outputs on a padded batch; export back bit-exactly.

Tolerance 1e-4 (float32, 'highest' matmul precision). If these fail after a
transformers upgrade, check transformers' T5 config handling of
tie_word_embeddings / scale_decoder_outputs first (t5x_lite/interop/hf.py).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from t5x_lite import layers  # pylint: disable=g-import-not-at-top
from t5x_lite import network
from t5x_lite.config import ModelConfig
from t5x_lite.interop import hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 128
TOL = 1e-4


@pytest.fixture(autouse=True, scope='module')
def _highest_precision():
  old = jax.config.jax_default_matmul_precision
  jax.config.update('jax_default_matmul_precision', 'highest')
  yield
  jax.config.update('jax_default_matmul_precision', old)


def _hf_model(feed_forward_proj, tied, seed):
  cfg = transformers.T5Config(
      vocab_size=VOCAB, d_model=64, d_ff=128, d_kv=16, num_heads=4,
      num_layers=2, num_decoder_layers=2, feed_forward_proj=feed_forward_proj,
      tie_word_embeddings=tied, dropout_rate=0.0,
      relative_attention_num_buckets=32, relative_attention_max_distance=128)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  with torch.no_grad():
    # HF initialises norms to 1: randomise them so a mixed-up norm shows.
    for name, p in model.named_parameters():
      if 'layer_norm' in name:
        p.copy_(1.0 + 0.2 * torch.randn_like(p))
    if not tied:  # T5.1.1: a separate lm_head
      model.lm_head.weight = torch.nn.Parameter(
          torch.randn(VOCAB, 64) * 0.05)
  return model


@pytest.fixture(scope='module', params=[('gated-gelu', False),
                                        ('relu', True)],
                ids=['t5.1.1', 't5.1.0'])
def hf_dir(request, tmp_path_factory):
  proj, tied = request.param
  d = str(tmp_path_factory.mktemp(proj))
  _hf_model(proj, tied, seed=len(proj)).save_pretrained(d)
  return d


def _batch():
  """Rows of different lengths, padded with 0; decoder starts with BOS 0."""
  rng = np.random.RandomState(0)
  enc_lens, dec_lens = [12, 7, 4], [9, 5, 2]
  enc = np.zeros((3, 12), np.int32)
  dec = np.zeros((3, 9), np.int32)
  for i, (n, m) in enumerate(zip(enc_lens, dec_lens)):
    enc[i, :n - 1] = rng.randint(2, VOCAB, n - 1)
    enc[i, n - 1] = 1  # EOS
    dec[i, 1:m] = rng.randint(2, VOCAB, m - 1)
  dec_valid = np.arange(9)[None] < np.array(dec_lens)[:, None]
  return enc, dec, dec_valid


def _hf_outputs(model, enc, dec, dec_valid):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(enc, dtype=torch.long),
                attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                decoder_input_ids=torch.tensor(dec, dtype=torch.long),
                decoder_attention_mask=torch.tensor(dec_valid,
                                                    dtype=torch.long))
  return out.logits.numpy(), out.encoder_last_hidden_state.numpy()


def _ours(fields, params, scan):
  cfg = ModelConfig(**dict(fields, scan_layers=scan))
  return network.build(cfg), {'params': params}


@pytest.mark.parametrize('scan', [True, False], ids=['scan', 'unrolled'])
def test_logits_and_encoder_match_hf(hf_dir, scan):
  enc, dec, dec_valid = _batch()
  model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir)
  want_logits, want_enc = _hf_outputs(model.eval(), enc, dec, dec_valid)

  fields, params = hf.import_hf(hf_dir, scan_layers=scan)
  module, variables = _ours(fields, params, scan)
  logits = module.apply(variables, enc, dec)
  encoded = module.apply(variables, enc, method=module.encode)
  assert logits.dtype == jnp.float32

  enc_valid = enc > 0
  enc_diff = np.abs(np.asarray(encoded) - want_enc)[enc_valid].max()
  logit_diff = np.abs(np.asarray(logits) - want_logits)[dec_valid].max()
  print(f'{os.path.basename(hf_dir)} scan={scan}: encoder max diff '
        f'{enc_diff:.2e}, logits max diff {logit_diff:.2e}')
  assert enc_diff <= TOL
  assert logit_diff <= TOL
  # The logits are not trivially small: the comparison means something.
  assert np.abs(want_logits).max() > 0.1


def test_import_reads_the_variant(hf_dir):
  fields, params = hf.import_hf(hf_dir)
  if 'gated' in hf_dir:
    assert fields['mlp_activations'] == ('gelu', 'linear')
    assert not fields['logits_via_embedding']
    assert params['decoder']['logits_dense']['kernel'].shape == (64, VOCAB)
  else:
    assert fields['mlp_activations'] == ('relu',)
    assert fields['logits_via_embedding']
    assert 'logits_dense' not in params['decoder']
  assert params['encoder']['layers']['attention']['query']['kernel'].shape == (
      2, 64, 64)


def test_export_import_bit_exact_and_loads_in_transformers(hf_dir, tmp_path):
  fields, params = hf.import_hf(hf_dir, scan_layers=True)
  out = str(tmp_path / 'exported')
  hf.export_hf(params, fields, out)
  fields2, params2 = hf.import_hf(out, scan_layers=True)
  assert fields2 == fields
  flat1 = jax.tree_util.tree_leaves_with_path(params)
  flat2 = dict(jax.tree_util.tree_leaves_with_path(params2))
  assert len(flat1) == len(flat2)
  for path, x in flat1:
    np.testing.assert_array_equal(x, flat2[path], err_msg=str(path))

  enc, dec, dec_valid = _batch()
  orig = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir)
  back = transformers.T5ForConditionalGeneration.from_pretrained(out)
  a, _ = _hf_outputs(orig.eval(), enc, dec, dec_valid)
  b, _ = _hf_outputs(back.eval(), enc, dec, dec_valid)
  diff = np.abs(a - b)[dec_valid].max()
  print(f'exported vs original HF logits max diff {diff:.2e}')
  assert diff <= TOL


def test_layouts_convert_both_ways(hf_dir):
  _, scanned = hf.import_hf(hf_dir, scan_layers=True)
  _, unrolled = hf.import_hf(hf_dir, scan_layers=False)
  assert 'layers_1' in unrolled['decoder'] and 'layers' in scanned['decoder']
  for a, b in ((network.stack_layers(unrolled), scanned),
               (network.unstack_layers(scanned), unrolled)):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      np.testing.assert_array_equal(x, y)


def test_relative_position_bucket_matches_hf():
  from transformers.models.t5 import modeling_t5  # pylint: disable=g-import-not-at-top
  bucket_fn = modeling_t5.T5Attention._relative_position_bucket  # pylint: disable=protected-access
  rel = np.arange(-600, 600)
  for bidirectional in (True, False):
    for buckets, dist in ((32, 128), (64, 512), (16, 64)):
      want = bucket_fn(torch.tensor(rel), bidirectional, buckets,
                       dist).numpy()
      got = layers.relative_position_bucket(jnp.asarray(rel), bidirectional,
                                            buckets, dist)
      np.testing.assert_array_equal(np.asarray(got), want)


def test_cli_import_export_round_trip(tmp_path):
  """The CLI writes a params-only Orbax checkpoint + config.json and exports
  it back to the same HF weights (T5.1.1; one variant keeps it quick)."""
  hf_dir = str(tmp_path / 'hf')
  _hf_model('gated-gelu', False, seed=1).save_pretrained(hf_dir)
  ckpt, out = str(tmp_path / 'ckpt'), str(tmp_path / 'hf_out')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  for args in (['import', f'--hf_dir={hf_dir}', f'--out={ckpt}'],
               ['export', f'--checkpoint={ckpt}', f'--out={out}']):
    r = subprocess.run([sys.executable, '-m', 't5x_lite.interop.hf'] + args,
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
  with open(os.path.join(ckpt, 'config.json')) as f:
    saved = json.load(f)
  assert saved['model']['emb_dim'] == 64 and saved['train']['batch_size'] > 0
  config, params = hf.load_params_checkpoint(ckpt)
  assert config.model.scan_layers and 'layers' in params['encoder']
  want = hf.load_hf_state_dict(hf_dir)
  got = hf.load_hf_state_dict(out)
  for k, v in got.items():
    np.testing.assert_array_equal(v, want[k], err_msg=k)
  assert set(want) - set(got) <= {'encoder.embed_tokens.weight',
                                  'decoder.embed_tokens.weight',
                                  'lm_head.weight'}
