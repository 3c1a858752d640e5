"""`python -m t5x_lite.interop.hf` on what a user really passes it.

export: from a training workdir, checkpoints dir or step dir (two trained
steps of the tiny configs, real Orbax checkpoints), loaded back with
transformers and compared with our own forward pass (fp32, 'highest' matmul
precision); an encoder-only run goes to T5EncoderModel, a decoder-only one
is refused in one line. import: an empty dir, a BERT dir, a config without
weights and a missing dir each fail in one line with exit status 2 before any
weights are read; a real tiny T5 imports.

If a parity bound fails after a transformers upgrade, look at how its T5
config reads tie_word_embeddings / scale_decoder_outputs first.
"""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from t5x_lite import checkpoint_inspection  # pylint: disable=g-import-not-at-top
from t5x_lite import network
from t5x_lite import params_checkpoints
from t5x_lite.interop import hf
from t5x_lite.model_config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2
TOL = 1e-4  # fp32; measured ~2.5e-6 (logits) and ~1.3e-6 (encoder output)
HINT = ('a Hugging Face T5 directory (save_pretrained) holds config.json and '
        'model.safetensors (or model.safetensors.index.json with its shards, '
        'or pytorch_model.bin).')


@pytest.fixture(autouse=True, scope='module')
def _highest_precision():
  old = jax.config.jax_default_matmul_precision
  jax.config.update('jax_default_matmul_precision', 'highest')
  yield
  jax.config.update('jax_default_matmul_precision', old)


def _hf_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='',
             TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 't5x_lite.interop.hf', *args],
                        cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)


def _error_line(proc, status):
  """The one `error:` line of a failed run (and nothing that looks like a
  traceback)."""
  assert proc.returncode == status, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1, proc.stderr[-3000:]
  return errors[0]


def _train(config_name, workdir, arg=None, **overrides):
  """Two real training steps of configs/<config_name>.py (the loop, its
  Orbax checkpoint at step 2)."""
  import importlib  # pylint: disable=g-import-not-at-top
  from t5x_lite import loop  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f't5x_lite.configs.{config_name}'
                                   ).get_config(arg)
  c = config
  c.train.num_steps = STEPS
  c.train.batch_size = 8
  c.train.log_every_steps = 1
  c.checkpoint.every_steps = STEPS
  c.checkpoint.async_save = False
  c.eval.every_steps = STEPS
  c.eval.num_batches = 1
  c.eval.batch_size = 8
  c.eval.num_decode_examples = 0
  for key, value in overrides.items():
    group, name = key.split('.')
    c[group][name] = value
  loop.train_and_evaluate(config, workdir)
  assert sorted(checkpoint_inspection.step_dirs(
      checkpoint_inspection.checkpoint_dir(workdir))) == [STEPS]
  return config


def _padded_batch(vocab):
  """Rows of different lengths, padded with 0, EOS 1; decoder starts at 0."""
  rng = np.random.RandomState(0)
  enc = np.zeros((3, 12), np.int32)
  dec = np.zeros((3, 9), np.int32)
  for i, (n, m) in enumerate(zip([12, 7, 4], [9, 5, 2])):
    enc[i, :n - 1] = rng.randint(2, vocab, n - 1)
    enc[i, n - 1] = 1
    dec[i, 1:m] = rng.randint(2, vocab, m - 1)
  dec_valid = np.arange(9)[None] < np.array([9, 5, 2])[:, None]
  return enc, dec, dec_valid


def _long(x):
  return torch.tensor(np.asarray(x), dtype=torch.long)


def _loaded(cls, out):
  """The exported dir through transformers, every weight accounted for."""
  model, info = getattr(transformers, cls).from_pretrained(
      out, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  assert not info['mismatched_keys'], info
  return model.eval()


# ---- export from training checkpoints ------------------------------------------


@pytest.fixture(scope='module')
def t5_run(tmp_path_factory):
  """(workdir, config, CLI export of the workdir) of local_tiny, 2 steps."""
  workdir = str(tmp_path_factory.mktemp('t5_run'))
  config = _train('local_tiny', workdir)
  out = str(tmp_path_factory.mktemp('t5_hf') / 'hf')
  proc = _hf_cli('export', f'--checkpoint={workdir}', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, config, out, proc.stdout


def test_export_from_a_workdir_matches_our_logits(t5_run):
  workdir, config, out, stdout = t5_run
  step_dir = os.path.join(workdir, 'checkpoints', str(STEPS))
  n = network.param_count(ModelConfig.from_config(config.model))
  assert stdout.strip() == (
      f'Exported step {STEPS} of {step_dir} (encoder_decoder) to {out} as HF '
      f'T5ForConditionalGeneration: {n:,} params.')
  with open(os.path.join(out, 'config.json')) as f:
    hf_cfg = json.load(f)
  assert hf_cfg['architectures'] == ['T5ForConditionalGeneration']
  assert (hf_cfg['d_model'], hf_cfg['vocab_size']) == (128, 4224)

  # Ours: the step's params, restored on their own, in the trained network.
  module = network.build(ModelConfig.from_config(config.model))
  params = params_checkpoints.restore_params(step_dir)
  enc, dec, dec_valid = _padded_batch(config.model.vocab_size)
  ours = np.asarray(module.apply({'params': params}, enc, dec))
  model = _loaded('T5ForConditionalGeneration', out)
  with torch.no_grad():
    theirs = model(input_ids=_long(enc), attention_mask=_long(enc > 0),
                   decoder_input_ids=_long(dec),
                   decoder_attention_mask=_long(dec_valid)).logits.numpy()
  diff = np.abs(ours - theirs)[dec_valid].max()
  print(f'T5ForConditionalGeneration vs ours: logits max diff {diff:.2e}')
  assert diff <= TOL
  assert np.abs(ours).max() > 0.5  # not trivially small logits


def test_checkpoints_dir_and_step_dir_export_the_same_bytes(t5_run, tmp_path):
  workdir, _, out, _ = t5_run
  with open(os.path.join(out, 'model.safetensors'), 'rb') as f:
    want = f.read()
  for path in (os.path.join(workdir, 'checkpoints'),
               os.path.join(workdir, 'checkpoints', str(STEPS))):
    got_dir = str(tmp_path / os.path.basename(path))
    hf.export_checkpoint(path, got_dir)
    with open(os.path.join(got_dir, 'model.safetensors'), 'rb') as f:
      assert f.read() == want, path


def test_export_refuses_an_occupied_out_and_a_missing_checkpoint(t5_run,
                                                                tmp_path):
  workdir, _, out, _ = t5_run
  before = os.path.getmtime(os.path.join(out, 'model.safetensors'))
  line = _error_line(_hf_cli('export', f'--checkpoint={workdir}',
                             f'--out={out}'), 2)
  assert line == (f'error: --out {out} exists and is not empty; pick a new '
                  'directory (nothing was written).')
  assert os.path.getmtime(os.path.join(out, 'model.safetensors')) == before

  empty = tmp_path / 'never_trained'
  empty.mkdir()
  line = _error_line(_hf_cli('export', f'--checkpoint={empty}',
                             f'--out={tmp_path / "hf"}'), 1)
  assert line.startswith(f'error: No checkpoint at {empty}: '), line
  assert line.endswith('No checkpoint steps exist there; train first (python '
                       '-m t5x_lite.train --workdir=...) or pass '
                       '--checkpoint=<step dir>.'), line
  assert not (tmp_path / 'hf').exists()


def test_encoder_only_run_exports_to_t5_encoder_model(tmp_path):
  """ELECTRA: the discriminator's embedding + encoder is T5EncoderModel;
  its heads and the generator are named as not exported."""
  workdir = str(tmp_path / 'electra')
  config = _train('pretrain_electra', workdir, 'tiny',
                  **{'optimizer.warmup_steps': 1})
  out = str(tmp_path / 'hf')
  proc = _hf_cli('export', f'--checkpoint={workdir}/checkpoints',
                 f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 3, proc.stdout
  assert lines[0].endswith(f'(encoder_only) to {out} as HF T5EncoderModel: '
                           '352,704 params.'), lines[0]
  assert lines[1] == (
      'Not exported (T5EncoderModel has no place for them): classifier/ '
      '(128), mlm_bias (4,224), mlm_dense/ (4,096), mlm_norm/ (64), pooler/ '
      '(4,096), rtd_dense/ (4,096), rtd_out/ (64).')
  assert lines[2].startswith('Not exported (trained by the objective but not '
                             'part of the model it keeps): generator/ ('), lines

  step_dir = os.path.join(workdir, 'checkpoints', str(STEPS))
  trained = params_checkpoints.restore_params(step_dir)
  cfg = ModelConfig.from_config(config.model)
  module = network.build(cfg)
  enc, _, _ = _padded_batch(cfg.vocab_size)
  ours = np.asarray(module.apply({'params': trained['discriminator']}, enc,
                                 head='hidden'))
  model = _loaded('T5EncoderModel', out)
  assert sum(p.numel() for p in model.parameters()) == 352_704
  with torch.no_grad():
    theirs = model(input_ids=_long(enc),
                   attention_mask=_long(enc > 0)).last_hidden_state.numpy()
  diff = np.abs(ours - theirs)[enc > 0].max()
  print(f'T5EncoderModel vs our encoder: max diff {diff:.2e}')
  assert diff <= TOL
  assert np.abs(ours).max() > 0.5


def test_decoder_only_is_refused_in_one_line(tmp_path):
  from t5x_lite import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.default_config()
  config.model.arch = 'decoder_only'
  cfg = ModelConfig.from_config(config.model)
  module = network.build(cfg)
  params = nn.meta.unbox(module.init(jax.random.PRNGKey(0),
                                     *network.dummy_inputs(cfg))['params'])
  ckpt = params_checkpoints.save_params_only(
      str(tmp_path / 'lm'), jax.tree.map(np.asarray, params),
      config.to_dict())
  out = tmp_path / 'hf'
  line = _error_line(_hf_cli('export', f'--checkpoint={ckpt}',
                             f'--out={out}'), 2)
  assert line == (
      "error: model.arch='decoder_only' has no Hugging Face class: "
      "transformers runs T5's decoder only behind an encoder, so a "
      'decoder-only T5 matches none; export takes encoder_decoder '
      '(T5ForConditionalGeneration) or encoder_only (T5EncoderModel) '
      'checkpoints.')
  assert not out.exists()


# ---- import: the HF directory is checked before any weights load ---------------


def test_import_of_a_missing_or_empty_dir_names_what_a_t5_dir_holds(tmp_path):
  out = tmp_path / 'ckpt'
  missing = tmp_path / 'no_such_dir'
  line = _error_line(_hf_cli('import', f'--hf_dir={missing}', f'--out={out}'),
                     2)
  assert line == f'error: --hf_dir {missing} does not exist; {HINT}'
  empty = tmp_path / 'empty'
  empty.mkdir()
  line = _error_line(_hf_cli('import', f'--hf_dir={empty}', f'--out={out}'), 2)
  assert line == f'error: {empty} has no config.json (it is empty); {HINT}'
  assert not out.exists()


def test_import_of_a_bert_dir_names_its_model_type(tmp_path):
  bert = tmp_path / 'bert'
  transformers.BertConfig().save_pretrained(str(bert))
  out = tmp_path / 'ckpt'
  line = _error_line(_hf_cli('import', f'--hf_dir={bert}', f'--out={out}'), 2)
  assert line == (
      f"error: {bert}/config.json has model_type='bert' (no architectures "
      "listed); import reads model_type 't5' (T5ForConditionalGeneration: "
      'T5.1.0, T5.1.1 and their fine-tunes).')
  assert not out.exists()


def _tiny_t5(directory, *, weights=True):
  cfg = transformers.T5Config(
      vocab_size=64, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=1,
      num_decoder_layers=1, feed_forward_proj='gated-gelu',
      tie_word_embeddings=False, dropout_rate=0.0)
  if not weights:
    cfg.save_pretrained(directory)
    return None
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(cfg).eval()
  model.save_pretrained(directory)
  return model


def test_import_of_a_config_without_weights_says_so(tmp_path):
  d = tmp_path / 'config_only'
  _tiny_t5(str(d), weights=False)
  out = tmp_path / 'ckpt'
  line = _error_line(_hf_cli('import', f'--hf_dir={d}', f'--out={out}'), 2)
  assert line == (
      f'error: {d} has config.json but no weights file (none of '
      'model.safetensors, model.safetensors.index.json, pytorch_model.bin); '
      'save the model there with save_pretrained, or copy its weights file '
      'next to config.json.')
  assert not out.exists()


def test_import_of_a_real_t5_and_an_occupied_out(tmp_path):
  d = tmp_path / 't5'
  model = _tiny_t5(str(d))
  out = tmp_path / 'ckpt'
  proc = _hf_cli('import', f'--hf_dir={d}', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  # Every HF parameter once; a head tied to the embedding (transformers 5
  # ties a new model's lm_head) becomes our own copy, logits_dense.
  tied = model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
  n = sum(p.numel() for p in model.parameters()) + (
      model.lm_head.weight.numel() if tied else 0)
  assert proc.stdout.strip() == f'Imported {n:,} params from {d} into {out}'
  params = params_checkpoints.restore_params(str(out))
  np.testing.assert_array_equal(
      params['decoder']['logits_dense']['kernel'],
      model.lm_head.weight.detach().numpy().T)
  files = sorted(os.listdir(out))
  line = _error_line(_hf_cli('import', f'--hf_dir={d}', f'--out={out}'), 2)
  assert line == (f'error: --out {out} exists; pick a new checkpoint '
                  'directory (nothing was written).')
  assert sorted(os.listdir(out)) == files


def test_params_only_dir_without_its_config_is_refused(tmp_path):
  """A params-only tree with no config.json: the model fields are unknown,
  so nothing is guessed (the CLI maps SourceError to exit 2)."""
  from t5x_lite.interop import checkpoint_source  # pylint: disable=g-import-not-at-top
  cfg = ModelConfig(num_encoder_layers=1, num_decoder_layers=1)
  params = nn.meta.unbox(network.build(cfg).init(
      jax.random.PRNGKey(0), *network.dummy_inputs(cfg))['params'])
  ckpt = params_checkpoints.save_params_only(str(tmp_path / 'bare'),
                                      jax.tree.map(np.asarray, params))
  with pytest.raises(checkpoint_source.SourceError) as e:
    hf.export_checkpoint(ckpt, str(tmp_path / 'hf'))
  assert str(e.value).startswith(f'{ckpt} has no saved config with the model '
                                 'fields; export reads them from the '
                                 'checkpoint'), e.value
  assert not (tmp_path / 'hf').exists()
  # With a config.json that describes another model: refused, not mangled.
  from t5x_lite import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.default_config()
  config.model.num_encoder_layers = config.model.num_decoder_layers = 1
  config.model.emb_dim = 2 * cfg.emb_dim
  other = params_checkpoints.save_params_only(str(tmp_path / 'other'),
                                       jax.tree.map(np.asarray, params),
                                       config.to_dict())
  with pytest.raises(checkpoint_source.SourceError) as e:
    hf.export_checkpoint(other, str(tmp_path / 'hf'))
  assert str(e.value).startswith(f'The params at {other} do not fit the model '
                                 'its saved config describes: '), e.value
  assert 'has shape' in str(e.value)
  assert not (tmp_path / 'hf').exists()
