"""Hugging Face T5 <-> t5x_lite params, and params-only Orbax checkpoints.

    python -m t5x_lite.interop.hf import --hf_dir=/data/t5-v1_1-small \
        --out=/tmp/ckpt
    python -m t5x_lite.interop.hf export --checkpoint=runs/ft --out=/tmp/hf_out

import reads an HF directory with config.json (model_type 't5') and
model.safetensors (or a sharded model.safetensors.index.json, or
pytorch_model.bin, which needs torch). T5.1.1 (gated-gelu, untied lm_head)
and T5.1.0 (relu, logits tied to the embedding and scaled by d_model**-0.5)
both convert exactly. The directory is checked (config.json, model_type, a
weights file, activations) before any weights are read (interop/hf_files.py).

export reads what eval and infer read (interop/checkpoint_source.py): a step
dir, a checkpoints dir or a workdir (the newest usable step), or a params-only
dir; the model fields come from the checkpoint's saved config. By model.arch:

  encoder_decoder  -> T5ForConditionalGeneration (everything is exported)
  encoder_only     -> T5EncoderModel: the token embedding and the encoder
                      stack (our Encoder is HF's T5Stack without a decoder).
                      The heads (mlm_dense/, mlm_norm/, mlm_bias, rtd_dense/,
                      rtd_out/, pooler/, classifier/) have no T5EncoderModel
                      counterpart and are not exported; an objective's
                      training-only params (a generator) neither: both are
                      listed when the export runs.
  decoder_only     -> refused: transformers has no T5 decoder-only class
                      (T5's decoder always runs behind an encoder there).

A params-only checkpoint CKPT/ is an `ocp.StandardCheckpointer` directory of
the tree {'params': params} (fp32, scanned or unrolled layout) plus
CKPT/config.json: the full config (configs/default.py with the model fields
of the checkpoint). `save_params_checkpoint` / `load_params_checkpoint` write
and read it through params_checkpoints.save_params_only /
read_params_only_config / restore_params (the one place that knows the
layout);
`config.checkpoint.restore_from` can point at it.

Errors a user can cause are one line on stderr: exit 2 for a directory or
checkpoint that cannot be converted as asked, 1 for a checkpoint that cannot
be read. Nothing here imports torch unless a pytorch_model.bin is read.
"""
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from absl import flags
import jax
import ml_collections
import numpy as np

from t5x_lite import checkpoints
from t5x_lite import config as config_lib
from t5x_lite import network
from t5x_lite import params_checkpoints
from t5x_lite.interop import checkpoint_source
# Reading an HF directory lives in hf_files; these names are hf's API too.
from t5x_lite.interop.hf_files import InteropError
from t5x_lite.interop.hf_files import MODEL_TYPES
from t5x_lite.interop.hf_files import load_hf_state_dict
from t5x_lite.interop.hf_files import read_hf_config
from t5x_lite.interop.hf_files import weights_path

Params = Dict[str, Any]

# model.arch -> the transformers class an export loads into.
HF_CLASSES = {'encoder_decoder': 'T5ForConditionalGeneration',
              'encoder_only': 'T5EncoderModel'}

# ---- configs -----------------------------------------------------------------

# HF activation names -> ours ('gelu' is the tanh approximation in both
# T5X and HF's gelu_new; HF's plain 'gelu' is the exact erf form).
_HF_TO_OURS_ACT = {'gelu_new': 'gelu', 'gelu_pytorch_tanh': 'gelu',
                   'relu': 'relu', 'silu': 'silu', 'swish': 'silu'}
_OURS_TO_HF_ACT = {'gelu': 'gelu_new', 'gelu_new': 'gelu_new', 'relu': 'relu',
                   'silu': 'silu'}


def _hf_activations(feed_forward_proj: str) -> Tuple[str, ...]:
  parts = feed_forward_proj.split('-')
  gated = parts[0] == 'gated' and len(parts) == 2
  act = parts[-1]
  if feed_forward_proj == 'gated-gelu':  # HF: gated-gelu means gelu_new
    act = 'gelu_new'
  if act not in _HF_TO_OURS_ACT:
    raise InteropError(
        f'HF feed_forward_proj={feed_forward_proj!r} has activation {act!r}, '
        f'which t5x_lite lacks (it has {sorted(_HF_TO_OURS_ACT)}; HF "gelu" '
        'is the exact erf GELU, ours the tanh approximation).')
  ours = _HF_TO_OURS_ACT[act]
  return (ours, 'linear') if gated else (ours,)


def _feed_forward_proj(activations) -> str:
  acts = tuple(activations)
  if len(acts) == 2 and acts[1] == 'linear' and acts[0] in _OURS_TO_HF_ACT:
    act = _OURS_TO_HF_ACT[acts[0]]
    return 'gated-gelu' if act == 'gelu_new' else f'gated-{act}'
  if len(acts) == 1 and acts[0] in _OURS_TO_HF_ACT:
    return _OURS_TO_HF_ACT[acts[0]]
  raise InteropError(f'mlp_activations={acts} has no HF T5 equivalent; HF '
                     'supports (act,) or (act, "linear").')


def _scales_logits(hf_cfg: Mapping[str, Any]) -> bool:
  """HF multiplies the decoder output by d_model**-0.5 (T5.1.0) when
  `scale_decoder_outputs` (transformers >= 5) or, before that, when
  `tie_word_embeddings` is not False."""
  if 'scale_decoder_outputs' in hf_cfg:
    return bool(hf_cfg['scale_decoder_outputs'])
  return hf_cfg.get('tie_word_embeddings', True) is not False


def model_fields_from_hf(hf_cfg: Mapping[str, Any]) -> Dict[str, Any]:
  """config.model fields from an HF T5 config.json dict."""
  if hf_cfg.get('model_type', 't5') not in MODEL_TYPES:
    raise InteropError(f'Expected an HF T5 config, got model_type='
                       f'{hf_cfg.get("model_type")!r}.')
  num_layers = hf_cfg.get('num_layers', 6)
  dec_layers = hf_cfg.get('num_decoder_layers') or num_layers
  return dict(
      arch='encoder_decoder',
      vocab_size=int(hf_cfg['vocab_size']),
      emb_dim=int(hf_cfg['d_model']),
      num_heads=int(hf_cfg['num_heads']),
      head_dim=int(hf_cfg['d_kv']),
      mlp_dim=int(hf_cfg['d_ff']),
      num_encoder_layers=int(num_layers),
      num_decoder_layers=int(dec_layers),
      mlp_activations=_hf_activations(hf_cfg.get('feed_forward_proj', 'relu')),
      logits_via_embedding=_scales_logits(hf_cfg),
      dropout_rate=float(hf_cfg.get('dropout_rate', 0.1)),
      relative_attention_num_buckets=int(
          hf_cfg.get('relative_attention_num_buckets', 32)),
      relative_attention_max_distance=int(
          hf_cfg.get('relative_attention_max_distance', 128)),
      layer_norm_epsilon=float(hf_cfg.get('layer_norm_epsilon', 1e-6)),
  )


def check_exportable(m: Mapping[str, Any]) -> str:
  """The HF class model fields `m` export to; InteropError when none fits."""
  arch = m['arch']
  if arch not in HF_CLASSES:
    raise InteropError(
        f'model.arch={arch!r} has no Hugging Face class: transformers runs '
        "T5's decoder only behind an encoder, so a decoder-only T5 matches "
        'none; export takes encoder_decoder (T5ForConditionalGeneration) or '
        'encoder_only (T5EncoderModel) checkpoints.')
  if arch == 'encoder_decoder' and m.get('num_block_positions', 0) > 0:
    raise InteropError(
        f'model.num_block_positions={m["num_block_positions"]} (a learned '
        'second position table in the decoder) has no HF T5 counterpart; '
        'export needs num_block_positions=0.')
  _feed_forward_proj(m['mlp_activations'])  # raises for unmappable ones
  return HF_CLASSES[arch]


def hf_config_from_fields(m: Mapping[str, Any]) -> Dict[str, Any]:
  """An HF T5 config.json dict for model fields `m` (check_exportable's
  archs: T5ForConditionalGeneration or T5EncoderModel)."""
  hf_class = check_exportable(m)
  tied = bool(m['logits_via_embedding'])
  cfg = {
      'architectures': [hf_class],
      'model_type': 't5',
      'vocab_size': int(m['vocab_size']),
      'd_model': int(m['emb_dim']),
      'd_kv': int(m['head_dim']),
      'd_ff': int(m['mlp_dim']),
      'num_layers': int(m['num_encoder_layers']),
      'num_decoder_layers': int(m['num_decoder_layers']),
      'num_heads': int(m['num_heads']),
      'relative_attention_num_buckets': int(
          m['relative_attention_num_buckets']),
      'relative_attention_max_distance': int(
          m['relative_attention_max_distance']),
      'dropout_rate': float(m['dropout_rate']),
      'layer_norm_epsilon': float(m['layer_norm_epsilon']),
      'initializer_factor': 1.0,
      'feed_forward_proj': _feed_forward_proj(m['mlp_activations']),
      'is_encoder_decoder': True,
      'use_cache': True,
      'pad_token_id': 0,
      'eos_token_id': 1,
      'decoder_start_token_id': 0,
      # Older transformers read the logits scaling from tie_word_embeddings,
      # 5.x from scale_decoder_outputs: write both.
      'tie_word_embeddings': tied,
      'scale_decoder_outputs': tied,
      'torch_dtype': 'float32',
  }
  if hf_class == 'T5EncoderModel':
    # No decoder: no logits to scale; the stack's embed_tokens is `shared`
    # (tied in every transformers version). The decoder fields keep HF's
    # defaults (as many layers as the encoder) for tools that read them.
    cfg.update(is_encoder_decoder=False, use_cache=False,
               tie_word_embeddings=True,
               num_decoder_layers=int(m['num_encoder_layers']))
    del cfg['scale_decoder_outputs'], cfg['decoder_start_token_id']
  return cfg


# ---- state dicts -------------------------------------------------------------


def _attn_names(kind):
  return {'query': f'{kind}.q', 'key': f'{kind}.k', 'value': f'{kind}.v',
          'out': f'{kind}.o'}


def _mlp_names(m):
  acts = tuple(m['mlp_activations'])
  wis = ['wi'] if len(acts) == 1 else [f'wi_{i}' for i in range(len(acts))]
  return wis + ['wo']


def _layer_map(m, stack: str, i: int) -> Dict[Tuple[str, ...], str]:
  """Our unrolled param path -> HF name, for layer i of `stack`."""
  pre = f'{stack}.block.{i}.layer'
  ours = (stack, f'layers_{i}')
  out = {}
  if stack == 'encoder':
    parts = [('pre_attention_layer_norm', 'attention', 0, 'SelfAttention')]
    mlp_idx = 1
  else:
    parts = [('pre_self_attention_layer_norm', 'self_attention', 0,
              'SelfAttention'),
             ('pre_cross_attention_layer_norm', 'encoder_decoder_attention', 1,
              'EncDecAttention')]
    mlp_idx = 2
  for norm, attn, j, kind in parts:
    out[ours + (norm, 'scale')] = f'{pre}.{j}.layer_norm.weight'
    for ours_name, hf_name in _attn_names(kind).items():
      out[ours + (attn, ours_name, 'kernel')] = f'{pre}.{j}.{hf_name}.weight'
  out[ours + ('pre_mlp_layer_norm', 'scale')] = (
      f'{pre}.{mlp_idx}.layer_norm.weight')
  for w in _mlp_names(m):
    out[ours + ('mlp', w, 'kernel')] = (
        f'{pre}.{mlp_idx}.DenseReluDense.{w}.weight')
  return out


def _param_map(m) -> Dict[Tuple[str, ...], str]:
  """Our unrolled param path -> HF name (kernels are HF weights transposed).
  encoder_only: the embedding and the encoder (T5EncoderModel's names)."""
  out = {('token_embedder', 'embedding'): 'shared.weight'}
  stacks = [('encoder', m['num_encoder_layers'])]
  if m['arch'] == 'encoder_decoder':
    stacks.append(('decoder', m['num_decoder_layers']))
  for stack, n in stacks:
    out[(stack, 'relpos_bias', 'rel_embedding')] = (
        f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight')
    for i in range(n):
      out.update(_layer_map(m, stack, i))
    norm = 'encoder_norm' if stack == 'encoder' else 'decoder_norm'
    out[(stack, norm, 'scale')] = f'{stack}.final_layer_norm.weight'
  if m['arch'] == 'encoder_decoder' and not m['logits_via_embedding']:
    out[('decoder', 'logits_dense', 'kernel')] = 'lm_head.weight'
  return out


def _transposed(path) -> bool:
  """Kernels are [in, out] here, [out, in] in torch; the relative bias table
  is [heads, buckets] here, [buckets, heads] in HF."""
  return path[-1] in ('kernel', 'rel_embedding')


def _set(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def params_from_hf(state: Mapping[str, np.ndarray], hf_cfg: Mapping[str, Any],
                   scan_layers: bool = True) -> Tuple[Dict[str, Any], Params]:
  """(model fields, params) from an HF state dict and config.json dict."""
  m = model_fields_from_hf(hf_cfg)
  state = dict(state)
  if 'shared.weight' not in state and 'encoder.embed_tokens.weight' in state:
    # Some exports keep only the stacks' copies of the embedding.
    state['shared.weight'] = state['encoder.embed_tokens.weight']
  lm_head = state.get('lm_head.weight')
  tied_head = lm_head is None or np.array_equal(lm_head, state['shared.weight'])
  if m['logits_via_embedding'] and not tied_head:
    # Scaled outputs with a distinct head: fold the scale into the kernel.
    m['logits_via_embedding'] = False
    state['lm_head.weight'] = lm_head * np.float32(m['emb_dim'] ** -0.5)
  elif not m['logits_via_embedding'] and lm_head is None:
    # HF ties the head to the embedding without scaling: an untied copy.
    state['lm_head.weight'] = state['shared.weight']
  params: Params = {}
  for path, name in _param_map(m).items():
    if name not in state:
      raise InteropError(
          f'The HF weights lack {name!r} (needed for {"/".join(path)}); '
          'import reads T5ForConditionalGeneration weights (encoder, decoder '
          'and shared embedding).')
    w = np.asarray(state[name], np.float32)
    _set(params, path, np.ascontiguousarray(w.T if _transposed(path) else w))
  if scan_layers:
    params = network.stack_layers(params)
  return m, params


def params_to_hf(params: Params, m: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """HF state dict (float32 numpy) from our params (either layout)."""
  params = network.unstack_layers(_plain(params))
  out = {}
  for path, name in _param_map(m).items():
    w = np.asarray(_get(params, path), np.float32)
    out[name] = np.ascontiguousarray(w.T if _transposed(path) else w)
  return out


def _plain(tree):
  """Nested plain dicts of numpy arrays (drops flax boxes / FrozenDicts)."""
  if hasattr(tree, 'items'):
    return {k: _plain(v) for k, v in tree.items()}
  if hasattr(tree, 'unbox'):
    tree = tree.unbox()
  return np.asarray(tree)


def import_hf(hf_dir: str, scan_layers: bool = True
              ) -> Tuple[Dict[str, Any], Params]:
  """(model fields, params) from an HF T5 directory.

  config.json, its model_type and activations, and the weights file are
  checked before any weights are read (InteropError, one line).
  """
  hf_cfg = read_hf_config(hf_dir)
  model_fields_from_hf(hf_cfg)  # an unsupported activation fails here
  weights_path(hf_dir)
  return params_from_hf(load_hf_state_dict(hf_dir), hf_cfg, scan_layers)


def export_hf(params: Params, model_fields: Mapping[str, Any],
              out_dir: str) -> str:
  """Writes out_dir/{config.json, model.safetensors} that the HF class of
  check_exportable (T5ForConditionalGeneration or T5EncoderModel)
  from_pretrained loads; returns that class's name."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  m = dict(model_fields)
  hf_cfg = hf_config_from_fields(m)
  state = params_to_hf(params, m)
  os.makedirs(out_dir, exist_ok=True)
  save_file(state, os.path.join(out_dir, 'model.safetensors'),
            metadata={'format': 'pt'})
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  return hf_cfg['architectures'][0]


def unexported(params: Params, m: Mapping[str, Any]) -> Dict[str, int]:
  """{name: param count} of our params the HF class has no place for (an
  encoder-only model's heads), by top-level name ('mlm_dense/')."""
  mapped = set(_param_map(m))
  out: Dict[str, int] = {}
  flat = jax.tree_util.tree_flatten_with_path(
      network.unstack_layers(_plain(params)))[0]
  for key_path, leaf in flat:
    path = tuple(k.key for k in key_path)
    if path not in mapped:
      name = path[0] + ('/' if len(path) > 1 else '')
      out[name] = out.get(name, 0) + int(np.size(leaf))
  return out


def _out_dir_is_free(out_dir: str) -> None:
  path = os.path.abspath(os.path.expanduser(out_dir))
  if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):
    raise InteropError(f'--out {path} exists and is not empty; pick a new '
                       'directory (nothing was written).')


def export_checkpoint(checkpoint: str, out_dir: str) -> str:
  """Exports the checkpoint at `checkpoint` (step dir, checkpoints dir,
  workdir or params-only dir) to the HF directory `out_dir` (new or empty).

  Returns a summary: what was exported, as which class, and what was not.
  Raises InteropError / checkpoint_source.SourceError (usage: an arch with
  no HF class, an occupied --out, no saved config) or
  checkpoints.CheckpointError (nothing readable at `checkpoint`).
  """
  _out_dir_is_free(out_dir)
  # The arch is checked before any params are read.
  source = checkpoint_source.read(checkpoint, check_fields=check_exportable)
  hf_class = check_exportable(source.fields)
  export_hf(source.params, source.fields, out_dir)
  kept = checkpoint_source.num_params(source.params)
  extra = unexported(source.params, source.fields)
  what = (f'step {source.step} of ' if source.kind == 'state' else '')
  lines = [f'Exported {what}{source.where} ({source.fields["arch"]}) to '
           f'{out_dir} as HF {hf_class}: '
           f'{kept - sum(extra.values()):,} params.']
  if extra:
    lines.append(f'Not exported ({hf_class} has no place for them): '
                 + ', '.join(f'{k} ({n:,})' for k, n in sorted(extra.items()))
                 + '.')
  if source.dropped:
    lines.append('Not exported (trained by the objective but not part of '
                 'the model it keeps): '
                 + ', '.join(f'{k} ({n:,})' for k, n in source.dropped) + '.')
  return '\n'.join(lines)


# ---- params-only Orbax checkpoints -------------------------------------------


def config_with_model(model_fields: Mapping[str, Any],
                      base: Optional[ml_collections.ConfigDict] = None
                      ) -> ml_collections.ConfigDict:
  """configs/default.py (or `base`) with config.model fields overwritten."""
  c = config_lib.default_config() if base is None else base
  with c.unlocked():
    for k, v in model_fields.items():
      c.model[k] = tuple(v) if isinstance(v, list) else v
  return c


def _tuples(x):
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def save_params_checkpoint(ckpt_dir: str, params: Params, config) -> None:
  """CKPT/ = StandardCheckpointer({'params': params}) + CKPT/config.json
  (params_checkpoints.save_params_only; CKPT must not exist)."""
  params_checkpoints.save_params_only(ckpt_dir, _plain(params),
                                      config.to_dict())


def load_params_checkpoint(ckpt_dir: str
                           ) -> Tuple[ml_collections.ConfigDict, Params]:
  """(config, params as numpy) from a params-only checkpoint directory.

  JSON lists come back as the schema's tuples (mlp_activations, mesh.rules),
  so validation and ModelConfig agree.
  """
  stored = params_checkpoints.read_params_only_config(ckpt_dir)
  if not stored:
    raise FileNotFoundError(
        f'{os.path.abspath(ckpt_dir)} has no config.json; export needs the '
        'model fields: import the checkpoint with `python -m '
        't5x_lite.interop.hf import`, or write its config.json by hand.')
  config = ml_collections.ConfigDict(_tuples(stored))
  return config, params_checkpoints.restore_params(ckpt_dir)


# ---- CLI ---------------------------------------------------------------------

USAGE = ('usage: python -m t5x_lite.interop.hf import --hf_dir=D --out=CKPT | '
         'export --checkpoint=CKPT --out=D')


def _fail(message, status: int):
  """One line on stderr (2: usage, 1: an unreadable checkpoint); the
  entrypoints' own helper, imported here so the library needs no CLI."""
  from t5x_lite import cli  # pylint: disable=g-import-not-at-top
  cli.fail(message, status)


def _import(hf_dir: str, out: str, scan_layers: bool) -> str:
  if os.path.exists(out):
    raise InteropError(f'--out {os.path.abspath(out)} exists; pick a new '
                       'checkpoint directory (nothing was written).')
  fields, params = import_hf(hf_dir, scan_layers=scan_layers)
  fields = dict(fields, scan_layers=scan_layers,
                size=os.path.basename(os.path.normpath(hf_dir)))
  config = config_with_model(fields)
  config_lib.validate(config, num_devices=1)
  save_params_checkpoint(out, params, config)
  n = sum(x.size for x in jax.tree_util.tree_leaves(params))
  return f'Imported {n:,} params from {hf_dir} into {out}'


def _main(argv):
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ('import', 'export'):
    _fail(f'{USAGE} (got {argv[1:]}).', 2)
  if not f.out:
    _fail(f'--out is required; {USAGE}.', 2)
  if argv[1] == 'import' and not f.hf_dir:
    _fail('import needs --hf_dir=<HF model directory>.', 2)
  if argv[1] == 'export' and not f.checkpoint:
    _fail('export needs --checkpoint=<step dir, checkpoints dir, workdir or '
          'params-only dir>.', 2)
  try:
    if argv[1] == 'import':
      print(_import(f.hf_dir, f.out, f.scan_layers), flush=True)
    else:
      print(export_checkpoint(f.checkpoint, f.out), flush=True)
  except (InteropError, checkpoint_source.SourceError,
          config_lib.ConfigError) as e:
    _fail(e, 2)
  except checkpoints.CheckpointError as e:
    _fail(e, 1)
  except OSError as e:  # an unreadable weights file, a full disk
    _fail(f'{type(e).__name__}: {e}', 1)


if __name__ == '__main__':
  flags.DEFINE_string('hf_dir', '', 'import: HF model directory.')
  flags.DEFINE_string('checkpoint', '', 'export: a step dir, checkpoints '
                      'dir, workdir or params-only dir.')
  flags.DEFINE_string('out', '', 'import: checkpoint dir to create; export: '
                      'HF directory to write.')
  flags.DEFINE_bool('scan_layers', True, 'import: stack layers for nn.scan '
                    '(config.model.scan_layers) or keep layers_<i>.')
  from t5x_lite import cli  # pylint: disable=g-import-not-at-top
  cli.run(_main)  # absl's app.run with one-line flag errors, quiet libraries
