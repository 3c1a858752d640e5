"""A Hugging Face model directory, read and checked: config.json and weights.

    hf_cfg = hf_files.read_hf_config(hf_dir)     # a T5 config, or InteropError
    state = hf_files.load_hf_state_dict(hf_dir)  # {HF name: float32 array}

Every way a directory can be wrong (missing, empty, no config.json, a config
that is not JSON or not T5, no weights file, a sharded index missing shards)
is an InteropError with one line naming what is there and what was expected,
raised before any weights are read. Nothing here imports torch unless a
pytorch_model.bin is read.
"""
import json
import os
from typing import Any, Dict

import numpy as np

MODEL_TYPES = ('t5',)  # HF config.json model_type values import reads
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json',
                'pytorch_model.bin')  # the first one present is read
_HF_DIR_HINT = ('a Hugging Face T5 directory (save_pretrained) holds '
                'config.json and model.safetensors (or '
                'model.safetensors.index.json with its shards, or '
                'pytorch_model.bin)')


class InteropError(ValueError):
  """An HF directory or a checkpoint that cannot be converted as asked; the
  message is one line naming the fix (the CLI exits 2)."""


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  out = {}
  # framework='flax' reads bfloat16 too (plain numpy has no bfloat16).
  with safe_open(path, framework='flax') as f:
    for k in f.keys():
      out[k] = np.asarray(f.get_tensor(k), dtype=np.float32)
  return out


def read_hf_config(hf_dir: str) -> Dict[str, Any]:
  """hf_dir/config.json as a dict, checked to be a T5 config; InteropError
  (one line naming what is there and what was expected) otherwise."""
  path = os.path.abspath(os.path.expanduser(hf_dir))
  if not os.path.isdir(path):
    what = 'is a file' if os.path.exists(path) else 'does not exist'
    raise InteropError(f'--hf_dir {path} {what}; {_HF_DIR_HINT}.')
  cfg_path = os.path.join(path, 'config.json')
  if not os.path.isfile(cfg_path):
    names = sorted(os.listdir(path))
    held = (f'it holds {names[:6]}' + (' ...' if len(names) > 6 else '')
            if names else 'it is empty')
    raise InteropError(f'{path} has no config.json ({held}); {_HF_DIR_HINT}.')
  try:
    with open(cfg_path) as f:
      hf_cfg = json.load(f)
  except ValueError as e:
    raise InteropError(f'{cfg_path} is not valid JSON ({e}).') from e
  if not isinstance(hf_cfg, dict):
    raise InteropError(f'{cfg_path} holds a JSON {type(hf_cfg).__name__}, not '
                       'an HF config object.')
  model_type = hf_cfg.get('model_type')
  if model_type not in MODEL_TYPES:
    what = hf_cfg.get('architectures') or 'no architectures listed'
    raise InteropError(
        f'{cfg_path} has model_type={model_type!r} ({what}); import reads '
        f'model_type {" or ".join(map(repr, MODEL_TYPES))} '
        '(T5ForConditionalGeneration: T5.1.0, T5.1.1 and their fine-tunes).')
  return hf_cfg


def weights_path(hf_dir: str) -> str:
  """The weights file import reads (WEIGHT_FILES order), after checking a
  sharded index's shards exist; InteropError when there is none."""
  path = os.path.abspath(os.path.expanduser(hf_dir))
  for name in WEIGHT_FILES:
    if os.path.isfile(os.path.join(path, name)):
      break
  else:
    raise InteropError(
        f'{path} has config.json but no weights file (none of '
        f'{", ".join(WEIGHT_FILES)}); save the model there with '
        'save_pretrained, or copy its weights file next to config.json.')
  found = os.path.join(path, name)
  if name.endswith('.index.json'):
    missing = [s for s in _shard_names(found)
               if not os.path.isfile(os.path.join(path, s))]
    if missing:
      raise InteropError(f'{found} lists shards that are not in {path}: '
                         f'{missing[:3]}; copy every shard next to it.')
  return found


def _shard_names(index_path: str):
  try:
    with open(index_path) as f:
      return sorted(set(json.load(f)['weight_map'].values()))
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise InteropError(f'{index_path} is not a safetensors index (a JSON '
                       f'object with "weight_map"): {e!r}.') from e


def load_hf_state_dict(hf_dir: str) -> Dict[str, np.ndarray]:
  """{HF param name: float32 numpy array} from an HF model directory."""
  path = weights_path(hf_dir)
  if path.endswith('.index.json'):
    out = {}
    for name in _shard_names(path):
      out.update(_read_safetensors(os.path.join(os.path.dirname(path), name)))
    return out
  if path.endswith('.bin'):
    import torch  # pylint: disable=g-import-not-at-top
    sd = torch.load(path, map_location='cpu', weights_only=True)
    return {k: v.float().numpy() for k, v in sd.items()}
  return _read_safetensors(path)
