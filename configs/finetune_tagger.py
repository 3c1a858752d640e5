r"""Fine-tune an encoder-only model as a token tagger (speaker names).

    python -m t5x_lite.train --config=configs/finetune_tagger.py:tiny \
        --config.checkpoint.restore_from=/tmp/bert_tiny --workdir=/tmp/tags

The argument picks the encoder size (tiny | small | base | large; it must
match the pretrained checkpoint, e.g. configs/pretrain_bert.py's).
objective.name='token_classification' (t5x_lite/objectives/
token_classification.py): a dense layer over every encoder output to
model.num_token_labels = 3 BIO logits, per-token cross entropy. The task is
shakespeare_speaker_tags (t5x_lite/tasks/speakers.py: passages of four
speeches, B/I on the speaker names). eval/token_f1 and eval/entity_f1 are on
the held-out plays. With restore_from, the encoder (and the MLM head) come
from the checkpoint and token_classifier/ starts fresh (the objective's
fresh_params, named in the log); without it everything trains from scratch.
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
  c = finetune_classifier.encoder_config(size, RECIPES, 'finetune_tagger')
  c.objective.name = 'token_classification'
  c.model.num_token_labels = 3  # O, B, I
  c.task.name = 'shakespeare_speaker_tags'
  c.task.feature_lengths.inputs = 128  # four speeches of <= 16 words + EOS
  c.eval.every_steps = max(100, c.train.num_steps // 3)
  return c
