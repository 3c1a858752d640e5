"""Hugging Face T5 <-> t5x_lite params, and params-only Orbax checkpoints.

    python -m t5x_lite.interop.hf import --hf_dir=/data/t5-v1_1-small \
        --out=/tmp/ckpt
    python -m t5x_lite.interop.hf export --checkpoint=/tmp/ckpt \
        --out=/tmp/hf_out

The HF side is a directory with config.json and model.safetensors (or a
sharded model.safetensors.index.json, or pytorch_model.bin, which needs
torch). T5.1.1 (gated-gelu, untied lm_head) and T5.1.0 (relu, logits tied to
the embedding and scaled by d_model**-0.5) both convert exactly.

A params-only checkpoint CKPT/ is an `ocp.StandardCheckpointer` directory of
the tree {'params': params} (fp32, scanned or unrolled layout) plus
CKPT/config.json: the full config (configs/default.py with the model fields
of the checkpoint). `save_params_checkpoint` / `load_params_checkpoint` write
and read it through checkpoints.save_params_only / read_params_only_config /
restore_params (the one place that knows the layout);
`config.checkpoint.restore_from` can point at it.

Nothing here imports torch unless a pytorch_model.bin is read.
"""
import json
import os
from typing import Any, Dict, Mapping, Optional, Tuple

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from t5x_lite import checkpoints
from t5x_lite import config as config_lib
from t5x_lite import network

Params = Dict[str, Any]

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
    raise ValueError(
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
  raise ValueError(f'mlp_activations={acts} has no HF T5 equivalent; HF '
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
  if hf_cfg.get('model_type', 't5') != 't5':
    raise ValueError(f'Expected an HF T5 config, got model_type='
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


def hf_config_from_fields(m: Mapping[str, Any]) -> Dict[str, Any]:
  """An HF T5 config.json dict for model fields `m` (encoder_decoder only)."""
  if m['arch'] != 'encoder_decoder':
    raise ValueError(f'HF export supports arch encoder_decoder (T5), got '
                     f'{m["arch"]!r}.')
  tied = bool(m['logits_via_embedding'])
  return {
      'architectures': ['T5ForConditionalGeneration'],
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


# ---- state dicts -------------------------------------------------------------


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  out = {}
  # framework='flax' reads bfloat16 too (plain numpy has no bfloat16).
  with safe_open(path, framework='flax') as f:
    for k in f.keys():
      out[k] = np.asarray(f.get_tensor(k), dtype=np.float32)
  return out


def load_hf_state_dict(hf_dir: str) -> Dict[str, np.ndarray]:
  """{HF param name: float32 numpy array} from an HF model directory."""
  single = os.path.join(hf_dir, 'model.safetensors')
  index = os.path.join(hf_dir, 'model.safetensors.index.json')
  binary = os.path.join(hf_dir, 'pytorch_model.bin')
  if os.path.exists(single):
    return _read_safetensors(single)
  if os.path.exists(index):
    with open(index) as f:
      files = sorted(set(json.load(f)['weight_map'].values()))
    out = {}
    for name in files:
      out.update(_read_safetensors(os.path.join(hf_dir, name)))
    return out
  if os.path.exists(binary):
    import torch  # pylint: disable=g-import-not-at-top
    sd = torch.load(binary, map_location='cpu', weights_only=True)
    return {k: v.float().numpy() for k, v in sd.items()}
  raise FileNotFoundError(
      f'{hf_dir} has no model.safetensors, model.safetensors.index.json or '
      'pytorch_model.bin; point --hf_dir at a save_pretrained directory.')


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
  """Our unrolled param path -> HF name (kernels are HF weights transposed)."""
  out = {('token_embedder', 'embedding'): 'shared.weight'}
  for stack, n in (('encoder', m['num_encoder_layers']),
                   ('decoder', m['num_decoder_layers'])):
    out[(stack, 'relpos_bias', 'rel_embedding')] = (
        f'{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight')
    for i in range(n):
      out.update(_layer_map(m, stack, i))
    norm = 'encoder_norm' if stack == 'encoder' else 'decoder_norm'
    out[(stack, norm, 'scale')] = f'{stack}.final_layer_norm.weight'
  if not m['logits_via_embedding']:
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
  if 'shared.weight' not in state:  # some exports keep only the stack copies
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
      raise KeyError(f'HF checkpoint lacks {name!r} (needed for '
                     f'{"/".join(path)}); is it a T5ForConditionalGeneration?')
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
  """(model fields, params) from an HF T5 directory."""
  with open(os.path.join(hf_dir, 'config.json')) as f:
    hf_cfg = json.load(f)
  return params_from_hf(load_hf_state_dict(hf_dir), hf_cfg, scan_layers)


def export_hf(params: Params, model_fields: Mapping[str, Any],
              out_dir: str) -> None:
  """Writes out_dir/{config.json, model.safetensors} that
  transformers.T5ForConditionalGeneration.from_pretrained loads."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  m = dict(model_fields)
  hf_cfg = hf_config_from_fields(m)
  state = params_to_hf(params, m)
  os.makedirs(out_dir, exist_ok=True)
  save_file(state, os.path.join(out_dir, 'model.safetensors'),
            metadata={'format': 'pt'})
  with open(os.path.join(out_dir, 'config.json'), 'w') as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)


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
  (checkpoints.save_params_only; CKPT must not exist)."""
  checkpoints.save_params_only(ckpt_dir, _plain(params), config.to_dict())


def load_params_checkpoint(ckpt_dir: str
                           ) -> Tuple[ml_collections.ConfigDict, Params]:
  """(config, params as numpy) from a params-only checkpoint directory.

  JSON lists come back as the schema's tuples (mlp_activations, mesh.rules),
  so validation and ModelConfig agree.
  """
  stored = checkpoints.read_params_only_config(ckpt_dir)
  if not stored:
    raise FileNotFoundError(
        f'{os.path.abspath(ckpt_dir)} has no config.json; export needs the '
        'model fields: import the checkpoint with `python -m '
        't5x_lite.interop.hf import`, or write its config.json by hand.')
  config = ml_collections.ConfigDict(_tuples(stored))
  return config, checkpoints.restore_params(ckpt_dir)


# ---- CLI ---------------------------------------------------------------------


def _main(argv):
  f = flags.FLAGS
  if len(argv) != 2 or argv[1] not in ('import', 'export'):
    raise app.UsageError('usage: python -m t5x_lite.interop.hf import '
                         '--hf_dir=D --out=CKPT | export --checkpoint=CKPT '
                         '--out=D')
  if not f.out:
    raise app.UsageError('--out is required.')
  if argv[1] == 'import':
    if not f.hf_dir:
      raise app.UsageError('import needs --hf_dir=<HF model directory>.')
    fields, params = import_hf(f.hf_dir, scan_layers=f.scan_layers)
    fields = dict(fields, scan_layers=f.scan_layers,
                  size=os.path.basename(os.path.normpath(f.hf_dir)))
    config = config_with_model(fields)
    config_lib.validate(config, num_devices=1)
    save_params_checkpoint(f.out, params, config)
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f'Imported {n:,} params from {f.hf_dir} into {f.out}')
  else:
    if not f.checkpoint:
      raise app.UsageError('export needs --checkpoint=<params checkpoint>.')
    config, params = load_params_checkpoint(f.checkpoint)
    export_hf(params, config.model.to_dict(), f.out)
    print(f'Exported {f.checkpoint} to {f.out} (HF T5ForConditionalGeneration)')


if __name__ == '__main__':
  flags.DEFINE_string('hf_dir', '', 'import: HF model directory.')
  flags.DEFINE_string('checkpoint', '', 'export: params-only checkpoint dir.')
  flags.DEFINE_string('out', '', 'import: checkpoint dir to create; export: '
                      'HF directory to write.')
  flags.DEFINE_bool('scan_layers', True, 'import: stack layers for nn.scan '
                    '(config.model.scan_layers) or keep layers_<i>.')
  app.run(_main)
