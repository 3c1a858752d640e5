"""Task metric functions in seqio's `(targets, predictions) -> {name: value}`
form (T5's definitions, scaled to 0-100). No TensorFlow here; sacrebleu,
rouge-score and scipy are imported when a metric first runs.
"""
import numpy as np


def accuracy(targets, predictions):
  """Exact-match accuracy of postprocessed predictions, in percent."""
  targets, predictions = list(targets), list(predictions)
  if len(targets) != len(predictions):
    raise ValueError(f'{len(targets)} targets but {len(predictions)} '
                     'predictions.')
  hits = sum(t == p for t, p in zip(targets, predictions))
  return {'accuracy': 100.0 * hits / max(len(targets), 1)}


def bleu(targets, predictions):
  """Corpus BLEU with sacrebleu, T5's settings (intl tokenizer, exp smooth)."""
  import sacrebleu  # pylint: disable=g-import-not-at-top
  score = sacrebleu.corpus_bleu(
      [str(p) for p in predictions], [[str(t) for t in targets]],
      smooth_method='exp', smooth_value=0.0, force=False, lowercase=False,
      tokenize='intl', use_effective_order=False)
  return {'bleu': score.score}


def rouge(targets, predictions, score_keys=('rouge1', 'rouge2', 'rougeLsum')):
  """Mean ROUGE F-measure (rouge-score, Porter stemmer), in percent.

  T5 splits sentences at ' . ' so rougeLsum sees them; we do the same. We
  report the plain mean rather than T5's bootstrap midpoint, so the number
  is deterministic.
  """
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  scorer = rouge_scorer.RougeScorer(list(score_keys), use_stemmer=True)
  prep = lambda s: str(s).replace(' . ', ' .\n')
  totals = {k: 0.0 for k in score_keys}
  n = 0
  for t, p in zip(targets, predictions):
    scores = scorer.score(target=prep(t), prediction=prep(p))
    for k in score_keys:
      totals[k] += scores[k].fmeasure
    n += 1
  return {k: 100.0 * v / max(n, 1) for k, v in totals.items()}


def pearson_corrcoef(targets, predictions):
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return {'pearson_corrcoef':
              100.0 * stats.pearsonr(np.asarray(targets, np.float64),
                                     np.asarray(predictions, np.float64))[0]}


def spearman_corrcoef(targets, predictions):
  from scipy import stats  # pylint: disable=g-import-not-at-top
  return {'spearman_corrcoef':
              100.0 * stats.spearmanr(targets, predictions)[0]}


def matthews_corrcoef(targets, predictions):
  """Matthews correlation of binary class ids (GLUE CoLA), in percent.

  A prediction that is not 0/1 (an invalid string -> -1) counts as wrong.
  """
  t = np.asarray(targets) == 1
  p = np.asarray(predictions) == 1
  valid = np.isin(np.asarray(predictions), (0, 1))
  p = np.where(valid, p, ~t)  # invalid -> the wrong class
  tp, tn = np.sum(t & p), np.sum(~t & ~p)
  fp, fn = np.sum(~t & p), np.sum(t & ~p)
  denom = np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
  mcc = 0.0 if denom == 0 else float(tp * tn - fp * fn) / denom
  return {'matthews_corrcoef': 100.0 * mcc}
