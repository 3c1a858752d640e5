"""The markdown report of bench/gpu_check.py's JSON lines.

One row per point (failed and skipped points too, saying so), then the
summary the issue asks for: the headline's MFU against the 50% target, the
ratio to the PyTorch peer at the same shapes, the best remat policy, XL's
largest batch and its peak memory, cold vs warm compile_s, the attention
check and the headline step's top ops.
"""
from typing import Dict, List, Optional

TARGET_MFU = 0.5


def _fmt(value, digits=2):
  if value is None:
    return '-'
  if isinstance(value, float):
    return f'{value:.{digits}f}'
  return str(value)


def _row(l: Dict) -> str:
  peer = l.get('bench') == 'hf_t5_peer'
  model = (f"HF T5 {l.get('size')} ({l.get('mode')})" if peer
           else l.get('size', '-'))
  note = ''
  if 'skipped' in l:
    note = f"skipped: {l['skipped']}"
  elif 'error' in l:
    note = f"error: {l['error']}"
  mfu = l.get('mfu')
  cells = [l['point'], l['role'], model, l.get('attention_impl', '-'),
           '-' if peer else l.get('remat', '-'), l.get('batch', '-'),
           l.get('packed', '-') if not peer else '-',
           _fmt(l.get('compile_s'), 1), _fmt(l.get('step_s'), 4),
           _fmt(l.get('tokens_per_s'), 0),
           f'{100 * mfu:.1f}%' if isinstance(mfu, float) else '-',
           _fmt(l.get('peak_mem_gb'), 1), note.replace('|', '/')]
  return '| ' + ' | '.join(str(c) for c in cells) + ' |'


def _best(lines, pred) -> Optional[Dict]:
  rows = [l for l in lines if 'tokens_per_s' in l and 'error' not in l and
          pred(l)]
  return max(rows, key=lambda l: l['tokens_per_s']) if rows else None


def _attention_table(lines) -> List[str]:
  att = [l for l in lines if l['role'] == 'attention']
  if not att or ('checks' not in att[0] and 'mask' not in att[0]):
    return []
  checks = att[0].get('checks') or [att[0]]
  out = ['', '## Fused attention check (bench/attention_check.py)', '',
         '| mask | impl | out err | max grad err | leak | cuDNN mask_type | '
         'fwd operands | ok |', '|' + ' --- |' * 8]
  for c in checks:
    grads = c.get('grad_err') or {}
    out.append('| ' + ' | '.join(str(x) for x in (
        c.get('mask'), c.get('impl'), c.get('out_err', '-'),
        max(grads.values()) if grads else '-', c.get('leak', '-'),
        c.get('mask_type', '-'), ', '.join(c.get('fwd_operands', [])) or '-',
        c.get('ok') if 'error' not in c else f"error: {c['error']}")) + ' |')
  return out


def _summary(lines, s) -> List[str]:
  out = ['', '## Summary', '']
  first = next((l for l in lines if l.get('bench') == 'train_throughput'),
               None)
  if first:
    out.append(f"- device: {first.get('device_kind')} "
               f"({first.get('platform')}), jax {first.get('jax', '?')}")
  head = _best(lines, lambda l: l.get('bench') == 'train_throughput' and
               l.get('size') == s.headline and l['role'] in (
                   'headline', 'sweep', 'warm'))
  peer = _best(lines, lambda l: l.get('bench') == 'hf_t5_peer' and
               l.get('size') == s.headline)
  if head:
    verdict = 'reaches' if head['mfu'] >= TARGET_MFU else 'is below'
    out.append(f"- {s.headline} at {s.inputs}/{s.targets}, batch "
               f"{head['batch']}: best MFU {100 * head['mfu']:.1f}% "
               f"({head['attention_impl']}, remat {head['remat']}), "
               f"{head['tokens_per_s']:.0f} tokens/s: {verdict} the "
               f"{100 * TARGET_MFU:.0f}% target")
  else:
    out.append(f'- {s.headline}: no point ran to completion')
  if head and peer:
    out.append(f"- vs the PyTorch peer (HF T5 {peer['mode']}, "
               f"{peer['tokens_per_s']:.0f} tokens/s): "
               f"{head['tokens_per_s'] / peer['tokens_per_s']:.2f}x "
               '(target: at least 2x)')
  big = [l for l in lines if l['role'] == 'big']
  fit = next((l for l in big if 'tokens_per_s' in l and 'error' not in l),
             None)
  if fit:
    out.append(f"- {s.big}: batch {fit['batch']} runs (remat full), peak "
               f"memory {fit['peak_mem_gb']:.1f} GB")
  elif big:
    out.append(f'- {s.big}: no batch of {s.big_batches} ran (see rows)')
  cold = next((l for l in lines if l['role'] == 'headline' and
               'compile_s' in l), None)
  warm = next((l for l in lines if l['role'] == 'warm' and
               'compile_s' in l), None)
  if cold and warm:
    out.append(f"- start to first step: {cold['compile_s']:.1f} s cold, "
               f"{warm['compile_s']:.1f} s warm (persistent cache: "
               f"{warm.get('cache_hits', 0)} hits)")
  skipped = [str(l['point']) for l in lines if 'skipped' in l]
  if skipped:
    out.append(f"- skipped at the time budget ({s.budget_s:.0f} s): points "
               f"{', '.join(skipped)}")
  return out


def _top_ops(lines) -> List[str]:
  prof = next((l for l in lines if l.get('top_ops')), None)
  if not prof:
    return []
  out = ['', f"## Top ops of one step ({prof['size']}, "
         f"{prof['attention_impl']}, remat {prof['remat']})", '',
         '| op | ms/step | share |', '| --- | --- | --- |']
  for op in prof['top_ops']:
    out.append(f"| `{op['name']}` | {op['ms_per_step']} | "
               f"{100 * op['share']:.1f}% |")
  return out


def write(lines: List[Dict], s, path: str):
  head = ['# GPU check (bench/gpu_check.sh)', '',
          f'T5.1.1 at inputs {s.inputs} / targets {s.targets}, bf16, '
          f'batch {s.batch} unless a row says otherwise; MFU from '
          't5x_lite/flops.py over the device\'s dense bf16 peak; compile_s is '
          'process start to the first step done.', '',
          '| # | role | model | impl | remat | batch | packed | compile_s | '
          'step_s | tokens/s | MFU | peak GB | note |', '|' + ' --- |' * 13]
  body = [_row(l) for l in lines if l['role'] != 'attention']
  text = head + body + _attention_table(lines) + _summary(lines, s) + (
      _top_ops(lines))
  with open(path, 'w') as f:
    f.write('\n'.join(text) + '\n')
