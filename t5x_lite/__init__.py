"""t5x_lite: pretrain and fine-tune text-to-text Transformers in JAX/Flax.

Importing the package imports neither TensorFlow nor seqio: those live in
t5x_lite.tasks, so GPU/TPU hosts can train from synthetic or pre-tokenized
batches without them.
"""
__version__ = '0.1.0'
