"""Converters between t5x_lite checkpoints and other frameworks' formats.

hf: Hugging Face T5 (`T5ForConditionalGeneration` directories), both ways.
"""
