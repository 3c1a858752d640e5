r"""Your own corpus as t5x_lite tasks (README, "Your own data").

A plain text file with one document per line is all a task needs. The
walkthrough uses Debian's fortune cookies (`python -m data.build
--corpus=fortunes` writes data/cache/fortunes/{train,validation}.txt); point
MY_CORPUS_DIR at a folder with your own train.txt and validation.txt (or edit
SPLITS: globs, TSV and JSONL work too) and MY_VOCAB at your vocabulary:

    python -m t5x_lite.tasks.vocab --input=data/cache/fortunes/train.txt \
        --vocab_size=8000 --out=runs/fortunes_vocab
    python -m t5x_lite.train --config=configs/local_tiny.py \
        --task_module=examples.my_tasks --config.task.name=fortunes_span \
        --config.model.vocab_size=8192 --workdir=runs/fortunes

Every entrypoint takes --task_module=examples.my_tasks (from the repository
root); eval and infer find it in the checkpoint's saved config. Paths are
made absolute here, so a run can be evaluated from any directory.
"""
import os

from t5x_lite import tasks

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_DIR = os.environ.get('MY_CORPUS_DIR') or os.path.join(
    _ROOT, 'data', 'cache', 'fortunes')
VOCAB = os.environ.get('MY_VOCAB') or os.path.join(_ROOT, 'runs',
                                                   'fortunes_vocab.model')
SPLITS = {'train': os.path.join(CORPUS_DIR, 'train.txt'),
          'validation': os.path.join(CORPUS_DIR, 'validation.txt')}

# T5's span corruption for an encoder-decoder (configs/local_tiny.py) ...
tasks.register_pretraining('fortunes_span', SPLITS, 'span_corruption',
                           vocabulary=VOCAB)
# ... and BERT's masked LM for an encoder-only model
# (configs/pretrain_bert.py:tiny): the same text, another objective.
tasks.register_pretraining('fortunes_mlm', SPLITS, 'mlm', vocabulary=VOCAB)
