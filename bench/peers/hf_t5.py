"""The PyTorch peer: Hugging Face T5ForConditionalGeneration, same shapes.

    python bench/peers/hf_t5.py --size=base --batch=128 --inputs=512 \
        --targets=114 --mode=compile          # or --mode=eager

One JSON line with train_throughput.py's keys (compile_s, step_s,
tokens_per_s, mfu, peak_mem_gb, ...), so bench/gpu_check.sh puts both in one
table. What it trains: T5.1.1 at a row of configs/models.py (random init, no
download: transformers' T5Config with gated GELU, untied logits, vocab
32128), fp32 params under bf16 autocast, torch's fused AdamW, synthetic
tokens of the same lengths. MFU uses t5x_lite/flops.py, the project's own
formula, so both frameworks are divided by the same FLOPs. --mode=compile
wraps the model in torch.compile (default mode); compile_s is process start
to the first step done either way. Runs on CPU too (tiny sizes; what
tests/test_bench.py does), where the numbers mean nothing.
"""
import time

_PROCESS_START = time.time()

# pylint: disable=g-import-not-at-top,wrong-import-position
import argparse
import json
import os
import resource
import statistics
import sys

# This process is torch's: JAX, if anything imports it, must not take GPU
# memory (it preallocates 75% of it when its GPU backend starts).
os.environ['JAX_PLATFORMS'] = 'cpu'
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch
import transformers

from configs import models as sizes
from t5x_lite import flops
from t5x_lite import lengths
from t5x_lite import model_config

# Dense bf16 peaks per device (train_throughput.PEAK_TFLOPS; that module
# imports JAX, this one must not).
PEAK_TFLOPS = {'H100': 989.0, 'H200': 989.0, 'A100': 312.0}


def hf_config(size: str, vocab: int) -> transformers.T5Config:
  """T5.1.1 at configs/models.py's row `size` (HF google/t5-v1_1-* dims)."""
  arch, emb, heads, head_dim, mlp, enc, dec = sizes.SIZES[size]
  if arch != 'encoder_decoder':
    raise ValueError(f'--size={size} is {arch}; the peer is T5 '
                     'encoder-decoder: tiny, small, base, large, xl, xxl.')
  return transformers.T5Config(
      vocab_size=vocab, d_model=emb, d_kv=head_dim, d_ff=mlp, num_heads=heads,
      num_layers=enc, num_decoder_layers=dec, feed_forward_proj='gated-gelu',
      tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0,
      pad_token_id=0, eos_token_id=1, use_cache=False)


def step_flops(size: str, vocab: int, inputs: int, targets: int,
               batch: int) -> float:
  """t5x_lite/flops.py's FLOPs of one step, the same as our model's."""
  arch, emb, heads, head_dim, mlp, enc, dec = sizes.SIZES[size]
  m = model_config.ModelConfig(
      arch=arch, size=size, vocab_size=vocab, emb_dim=emb, num_heads=heads,
      head_dim=head_dim, mlp_dim=mlp, num_encoder_layers=enc,
      num_decoder_layers=dec)
  lens = lengths.model_lengths(arch, {'inputs': inputs, 'targets': targets})
  return flops.arch_flops_per_step(m, lens, batch)


def synthetic_batch(batch, inputs, targets, vocab, device, seed):
  g = torch.Generator().manual_seed(seed)
  ids = lambda n: torch.randint(2, vocab, (batch, n), generator=g)
  return {'input_ids': ids(inputs).to(device),
          'labels': ids(targets).to(device)}


def device_info(device):
  """(peak FLOP/s, where it came from, device kind)."""
  if device.type == 'cuda':
    kind = torch.cuda.get_device_name(device)
    for name, tflops in PEAK_TFLOPS.items():
      if name.lower() in kind.lower():
        return tflops * 1e12, kind, kind
    return 0.0, 'unknown', kind
  # train_throughput.py's nominal CPU figure, so CPU lines carry an MFU too.
  return (os.cpu_count() or 1) * 2.5e9 * 32, 'cpu-nominal', 'cpu'


def peak_memory_gb(device):
  if device.type == 'cuda':
    return torch.cuda.max_memory_allocated(device) / 2**30, 'device'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 'host_rss'


def _sync(device):
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def measure(args):
  device = torch.device(args.device or ('cuda' if torch.cuda.is_available()
                                        else 'cpu'))
  torch.manual_seed(0)
  # TF32 for any fp32 matmul left outside autocast, as JAX's default on GPU.
  torch.backends.cuda.matmul.allow_tf32 = True
  model = transformers.T5ForConditionalGeneration(
      hf_config(args.size, args.vocab)).to(device)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
  fwd = torch.compile(model) if args.mode == 'compile' else model
  autocast_dtype = {'bfloat16': torch.bfloat16, 'float32': None}[args.dtype]

  def step(batch):
    with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
      loss = fwd(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  batches = [synthetic_batch(args.batch, args.inputs, args.targets,
                             args.vocab, device, s) for s in range(2)]
  loss = step(batches[0])
  _sync(device)
  compile_s = time.time() - _PROCESS_START
  for i in range(args.warmup):
    loss = step(batches[i % 2])
  _sync(device)
  times = []
  for i in range(args.steps):
    t = time.perf_counter()
    loss = step(batches[i % 2])
    _sync(device)
    times.append(time.perf_counter() - t)
  step_s = statistics.median(times)

  tokens = args.batch * (args.inputs + args.targets)
  attn = model.config._attn_implementation  # pylint: disable=protected-access
  f = step_flops(args.size, args.vocab, args.inputs, args.targets, args.batch)
  peak, peak_source, kind = device_info(device)
  mem_gb, mem_source = peak_memory_gb(device)
  return {
      'bench': 'hf_t5_peer',
      'config': f'hf_t5:{args.size}',
      'size': args.size,
      'batch': args.batch,
      'mode': args.mode,
      'dtype': args.dtype,
      'attention_impl': f'torch-{attn}',
      'compile_s': round(compile_s, 2),
      'step_s': round(step_s, 5),
      'tokens_per_s': round(tokens / step_s, 1),
      'model_tflops_per_step': round(f / 1e12, 4),
      'mfu': round(f / step_s / peak, 4) if peak else None,
      'peak_source': peak_source,
      'peak_mem_gb': round(mem_gb, 3),
      'mem_source': mem_source,
      'loss': round(float(loss.detach()), 4),
      'devices': 1,
      'device_kind': kind,
      'platform': device.type,
      'torch': torch.__version__,
      'transformers': transformers.__version__,
  }


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--size', default='base', choices=[
      s for s, row in sizes.SIZES.items() if row[0] == 'encoder_decoder'])
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--inputs', type=int, default=512)
  p.add_argument('--targets', type=int, default=114)
  p.add_argument('--vocab', type=int, default=32128)
  p.add_argument('--mode', choices=('eager', 'compile'), default='eager')
  p.add_argument('--dtype', choices=('bfloat16', 'float32'),
                 default='bfloat16', help='autocast dtype (params stay fp32)')
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--device', default='', help='cuda | cpu (default: cuda '
                 'when available)')
  p.add_argument('--output', default='', help='also append the line here')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  line = json.dumps(measure(args))
  print(line, flush=True)
  if args.output:
    with open(args.output, 'a') as f:
      f.write(line + '\n')


if __name__ == '__main__':
  main()
