"""Converters between t5x_lite checkpoints and other frameworks' formats.

hf: Hugging Face T5, both ways (`T5ForConditionalGeneration` directories in;
T5ForConditionalGeneration or T5EncoderModel out); hf_files reads and checks
an HF directory; checkpoint_source reads one of our checkpoints for export.
"""
