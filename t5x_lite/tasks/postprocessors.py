"""Postprocessors: decoded text -> the values metrics compare (T5's).

seqio calls them as `fn(text, example=..., is_target=...)`, hence **unused.
"""


def string_to_float(string, default=-1.0, **unused_kwargs):
  """'3.4' -> 3.4; anything unparsable -> `default` (STS-B regression)."""
  try:
    return float(string)
  except (TypeError, ValueError):
    return default


def string_label_to_class_id(string_label, label_classes, default=-1,
                             **unused_kwargs):
  """'positive' -> its index in `label_classes`; unknown -> `default`."""
  if string_label in label_classes:
    return list(label_classes).index(string_label)
  return default


def strip(string, **unused_kwargs):
  """Trims surrounding whitespace (free-text targets)."""
  return string.strip() if isinstance(string, str) else string
