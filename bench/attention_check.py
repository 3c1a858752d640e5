"""The fused attention branch on the real kernel: right, and still fused.

    python bench/attention_check.py [--tiny] [--output=FILE]

For each mask kind the network builds (key padding as lengths, causal,
packed segments, packed + causal, prefix LM, cross-attention with padded
keys) one JSON line: the cuDNN branch (layers._cudnn_attention) against the
einsum path in float32 on the same bf16 inputs, for the output and the
gradients of q, k, v and the relative bias (max error over the reference's
max magnitude); `leak`, the largest change of segment 1's outputs when
segment 2's keys and values move (packed kinds; must be 0); and, on a GPU,
what the lowered program hands cuDNN: the custom call's mask_type and its
operand shapes, which show that padding and causality reach the kernel as
lengths and a mask type, with no [batch, heads, q, kv] operand. On CPU
(--tiny, what tests/test_bench.py runs) the branch runs with XLA's kernel
and there is no custom call to read. Query rows with no visible key (packed
padding) are left out of the comparison: cuDNN and the einsum define them
differently and nothing reads them.
"""
import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

from t5x_lite import layers

SHAPES = {'gpu': dict(b=4, q=512, kv=512, cross_q=114, h=12, d=64),
          'tiny': dict(b=2, q=16, kv=16, cross_q=6, h=4, d=16)}


def _layout(b, n):
  """Token ids, segment ids, prefix of b rows of length n: row r has r+1
  segments (the last half padded in odd rows)."""
  tokens = np.full((b, n), 7, np.int32)
  seg = np.zeros((b, n), np.int32)
  prefix = np.zeros((b, n), np.int32)
  for r in range(b):
    real = n if r % 2 == 0 else n // 2
    tokens[r, real:] = 0
    bounds = np.linspace(0, real, r + 2).astype(int)
    for s in range(r + 1):
      seg[r, bounds[s]:bounds[s + 1]] = s + 1
    prefix[r, :max(real // 3, 1)] = 1
  return tokens, seg, prefix


def masks(s):
  tokens, seg, prefix = (jnp.asarray(a) for a in _layout(s['b'], s['kv']))
  lengths = layers.key_lengths(tokens)
  return {
      'padding': layers.AttentionMask(kv_lengths=lengths),
      'causal': layers.AttentionMask(causal=True),
      'packed': layers.AttentionMask(kv_lengths=lengths, q_segment_ids=seg,
                                     kv_segment_ids=seg),
      'packed_causal': layers.AttentionMask(causal=True, q_segment_ids=seg,
                                            kv_segment_ids=seg),
      'prefix': layers.AttentionMask(causal=True, prefix=prefix),
      'cross': layers.AttentionMask(kv_lengths=lengths),
  }, seg


def _inputs(s, kind):
  rng = np.random.default_rng(0)
  q_len = s['cross_q'] if kind == 'cross' else s['q']
  shape = lambda n: (s['b'], n, s['h'], s['d'])
  q, k, v = (jnp.asarray(rng.normal(size=shape(n)), jnp.bfloat16)
             for n in (q_len, s['kv'], s['kv']))
  bias = None
  if kind != 'cross':  # T5's cross-attention has no position bias
    rel = jnp.arange(s['kv'])[None, :] - jnp.arange(q_len)[:, None]
    bucket = layers.relative_position_bucket(rel, kind == 'padding', 32, 128)
    table = jnp.asarray(rng.normal(size=(s['h'], 32)), jnp.float32)
    bias = jnp.transpose(jnp.take(table.T, bucket, axis=0), (2, 0, 1))[None]
  return q, k, v, bias


def _rel_err(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-6))


_QUOTE = r'(?:\\22|\\"|")'  # MLIR prints a string's quotes as \22


def parse_fmha_calls(text):
  """[(target, mask_type, operand shapes, result shapes)] of every cuDNN
  attention custom call in a lowered program's text."""
  calls = []
  for line in text.splitlines():
    target = re.search(r'custom_call\s*@"?(__cudnn\$fmha\w*)', line)
    if not target:
      continue
    mask = re.search(r'mask_type' + _QUOTE + r'\s*:\s*' + _QUOTE + r'(\w+)',
                     line)
    sig = re.search(r':\s*\(([^()]*)\)\s*->\s*(.*)$', line)
    operands = re.findall(r'tensor<([^>]*)>', sig.group(1)) if sig else []
    results = re.findall(r'tensor<([^>]*)>', sig.group(2)) if sig else []
    calls.append((target.group(1), mask.group(1) if mask else None,
                  operands, results))
  return calls


def _lowered_calls(fn, grad_fn, args):
  """What the forward and the backward hand cuDNN (JSON-able)."""
  fwd = parse_fmha_calls(jax.jit(fn).lower(*args).as_text())
  bwd = [c for c in parse_fmha_calls(jax.jit(grad_fn).lower(*args).as_text())
         if 'Backward' in c[0]]
  out = {'mask_type': fwd[0][1] if fwd else None,
         'fwd_operands': fwd[0][2] if fwd else [],
         'bwd_results': bwd[0][3] if bwd else []}
  return out


def check(kind, mask, seg, s, fused_impl):
  q, k, v, bias = _inputs(s, kind)
  q_len, kv_len = q.shape[1], k.shape[1]
  dense = mask.dense(q_len, kv_len)
  # Rows with at least one visible key: the ones anything reads.
  seen = np.ones((s['b'], q_len), bool) if dense is None else np.asarray(
      jnp.any(jnp.broadcast_to(dense, (s['b'], 1, q_len, kv_len)), -1))[:, 0]
  rows = jnp.asarray(seen)[:, :, None, None]
  f32 = lambda x: None if x is None else x.astype(jnp.float32)

  # pylint: disable=protected-access
  def ref(q, k, v, b):
    return layers._xla_attention(f32(q), f32(k), f32(v), b, dense,
                                 dropout_rate=0.0, dropout_rng=None,
                                 deterministic=True, dtype=jnp.float32)

  def fused(q, k, v, b):
    return layers._cudnn_attention(q, k, v, b, mask)
  # pylint: enable=protected-access

  def loss(fn):
    return lambda *a: jnp.sum(jnp.where(rows, fn(*a), 0).astype(
        jnp.float32) ** 2)

  argnums = (0, 1, 2, 3) if bias is not None else (0, 1, 2)
  args = (q, k, v, bias)
  out_err = _rel_err(jnp.where(rows, jax.jit(fused)(*args), 0),
                     jnp.where(rows, ref(*args), 0))
  grad_fused = jax.grad(loss(fused), argnums)
  g_got = jax.jit(grad_fused)(*args)
  g_want = jax.grad(loss(ref), argnums)(*args)
  grad_err = {n: _rel_err(a, b) for n, a, b in zip('qkvb', g_got, g_want)}
  line = {'bench': 'attention_check', 'mask': kind, 'impl': fused_impl,
          'shape': [s['b'], q_len, kv_len, s['h'], s['d']],
          'out_err': round(out_err, 5),
          'grad_err': {n: round(e, 5) for n, e in grad_err.items()}}
  if kind.startswith('packed'):
    line['leak'] = _leak(fused, args, seg)
  if fused_impl == 'cudnn':
    line.update(_lowered_calls(fused, grad_fused, args))
  tol = 3e-2
  line['ok'] = bool(out_err < tol and max(grad_err.values()) < tol and
                    line.get('leak', 0.0) == 0.0)
  return line


def _leak(fused, args, seg):
  """Largest change of row 1's segment-1 outputs when its segment 2 moves."""
  q, k, v, bias = args
  seg = np.asarray(seg)
  two = jnp.asarray(seg[1] == 2)[None, :, None, None] & (
      jnp.arange(q.shape[0]) == 1)[:, None, None, None]
  one = np.asarray(seg[1] == 1)
  moved = fused(q, jnp.where(two, k + 3, k), jnp.where(two, v + 3, v), bias)
  base = fused(q, k, v, bias)
  return float(jnp.max(jnp.abs(moved[1, one].astype(jnp.float32) -
                               base[1, one].astype(jnp.float32))))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--tiny', action='store_true', help='CPU-sized shapes')
  p.add_argument('--output', default='', help='also append the lines here')
  args = p.parse_args(argv)
  on_gpu = jax.default_backend() == 'gpu'
  layers.FUSED_IMPLEMENTATION = 'cudnn' if on_gpu else 'xla'
  s = SHAPES['tiny' if args.tiny or not on_gpu else 'gpu']
  all_masks, seg = masks(s)
  failed = 0
  for kind, mask in all_masks.items():
    try:
      line = check(kind, mask, seg, s, layers.FUSED_IMPLEMENTATION)
    except Exception as e:  # pylint: disable=broad-except
      line = {'bench': 'attention_check', 'mask': kind,
              'impl': layers.FUSED_IMPLEMENTATION, 'ok': False,
              'error': f'{type(e).__name__}: {e}'.splitlines()[0][:300]}
    failed += not line['ok']
    text = json.dumps(line)
    print(text, flush=True)
    if args.output:
      with open(args.output, 'a') as f:
        f.write(text + '\n')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
