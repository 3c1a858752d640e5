"""Transformer-XL segment recurrence: the memory a decoder-only model carries.

The memory of a decoder with L layers, memory length M and batch B is

  {'memory':         [L, B, M, embed]  layer l's INPUT hidden states over the
                                       last M positions seen (stop-gradient),
   'memory_lengths': [B] int32         how many of those M slots are filled
                                       (the trailing ones; 0 = no memory)}

Layer l attends from the current segment's queries to keys/values projected
from [memory_l; segment] (stacks.DecoderLayer), causally over the extended
range, with T5's relative position bias of the extended positions: memory
slot m is absolute position m, segment token i is M + i. Slots not yet filled
(a stream's first segments) are masked out, so a fresh memory gives exactly
the memory-less model's logits.

A model that carries memory (objectives/transformer_xl.py's) has
`memory_length > 0` and offers `init_memory(batch_size)` and
`memory_loss_terms(params, batch, memory, rng, enable_dropout=...)` ->
(loss sum, (sums, new memory)); the trainer keeps the memory in
`trainer.MemoryTrainState.memory`, so Orbax checkpoints it with the params.
Nothing here imports TensorFlow.
"""
from typing import Any, Dict

import jax
import jax.numpy as jnp

Memory = Dict[str, jax.Array]
# Batch feature: 1 on rows whose stream restarts here (its memory is stale).
RESET_FEATURE = 'memory_reset'


def carries_memory(model) -> bool:
  """Whether the train/eval steps must thread a memory through `model`."""
  return int(getattr(model, 'memory_length', 0) or 0) > 0


def empty(num_layers: int, batch: int, memory_length: int, emb_dim: int,
          dtype) -> Memory:
  """A memory with no filled slot."""
  return {'memory': jnp.zeros((num_layers, batch, memory_length, emb_dim),
                              dtype),
          'memory_lengths': jnp.zeros((batch,), jnp.int32)}


def abstract(num_layers: int, batch: int, memory_length: int, emb_dim: int,
             dtype) -> Memory:
  """ShapeDtypeStructs of `empty`'s memory (no allocation)."""
  return jax.eval_shape(lambda: empty(num_layers, batch, memory_length,
                                      emb_dim, dtype))


def cleared(memory: Memory) -> Memory:
  """The same buffers with every slot marked empty (memory 'off')."""
  return {'memory': memory['memory'],
          'memory_lengths': jnp.zeros_like(memory['memory_lengths'])}


def reset_rows(memory: Memory, reset) -> Memory:
  """Empties the memory of rows where `reset` [batch] is nonzero."""
  if reset is None:
    return memory
  keep = jnp.asarray(reset).reshape(-1) == 0
  return {'memory': memory['memory'],
          'memory_lengths': jnp.where(keep, memory['memory_lengths'], 0)}


def extended_positions(segment_length: int, memory_length: int):
  """(query positions [1, seg], key positions [1, M + seg]) int32."""
  keys = jnp.arange(memory_length + segment_length, dtype=jnp.int32)[None]
  return keys[:, memory_length:], keys


def attention_mask(memory_lengths: jax.Array, segment_length: int,
                   memory_length: int) -> jax.Array:
  """bool [batch, 1, seg, M + seg]: causal over the extended range, and only
  the filled (trailing) memory slots."""
  q_pos, k_pos = extended_positions(segment_length, memory_length)
  causal = (k_pos[:, None, :] <= q_pos[:, :, None])[:, None]  # [1, 1, q, k]
  first = memory_length - memory_lengths.astype(jnp.int32)  # [batch]
  filled = k_pos[0][None, :] >= first[:, None]  # [batch, k]
  return jnp.logical_and(causal, filled[:, None, None, :])


def next_lengths(memory_lengths: jax.Array, segment_length: int,
                 memory_length: int) -> jax.Array:
  """Filled slots after a segment: min(before + seg, M)."""
  return jnp.minimum(memory_lengths.astype(jnp.int32) + segment_length,
                     memory_length)


def layer_memory(memory: jax.Array, x: jax.Array) -> jax.Array:
  """Layer input over [memory; segment] -> its last M positions (the next
  segment's memory of this layer). memory [b, M, e], x [b, seg, e]."""
  m = memory.shape[1]
  return jnp.concatenate([memory, x.astype(memory.dtype)], axis=1)[:, -m:]


def tree_select(take_new, new: Any, old: Any) -> Any:
  """new where take_new (a scalar bool) else old, leaf by leaf."""
  return jax.tree.map(lambda n, o: jnp.where(take_new, n, o), new, old)
