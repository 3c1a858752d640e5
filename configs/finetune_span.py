r"""Fine-tune an encoder-only model for extractive spans (who said a quote).

    python -m t5x_lite.train --config=configs/finetune_span.py:tiny \
        --config.checkpoint.restore_from=/tmp/bert_tiny --workdir=/tmp/span

The argument picks the encoder size (tiny | small | base | large; it must
match the pretrained checkpoint). objective.name='span_extraction'
(t5x_lite/objectives/span_extraction.py): start and end logits per token,
cross entropy of each over the passage positions, prediction the best
start <= end within objective.span_extraction.max_answer_tokens. The task is
shakespeare_speaker_span (t5x_lite/tasks/speakers.py): [CLS] quote EOS
passage EOS, the answer the speaker name of the speech the quote is from.
eval/exact_match and eval/span_f1 are on the held-out plays. With
restore_from, span_head/ starts fresh and the rest is restored; without it
everything trains from scratch.
"""
from t5x_lite.configs import finetune_classifier

# size -> (batch, steps, peak learning rate)
RECIPES = {
    'tiny': (32, 300, 1e-3),
    'small': (32, 3000, 1e-4),
    'base': (32, 3000, 5e-5),
    'large': (32, 3000, 2e-5),
}


def get_config(size='tiny'):
  c = finetune_classifier.encoder_config(size, RECIPES, 'finetune_span')
  c.objective.name = 'span_extraction'
  c.objective.span_extraction.max_answer_tokens = 8  # names are <= 4 words
  c.task.name = 'shakespeare_speaker_span'
  c.task.feature_lengths.inputs = 160  # [CLS] quote EOS passage EOS
  c.eval.every_steps = max(100, c.train.num_steps // 3)
  return c
