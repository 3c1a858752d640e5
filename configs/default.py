"""Every knob of t5x_lite, with its default and a one-line comment.

This file is the schema: any config file starts from `get_config()` here, and
validation (t5x_lite/config.py) rejects a key that is not in it. Other config
files pick a model size from configs/models.py and change a few fields.
Two groups are derived, not retyped: `model` from t5x_lite/model_config.py's
ModelConfig (each field's comment is there) and `objective` from the
registered objectives (t5x_lite/objectives/: `name` plus each objective's
own settings, e.g. objective.electra.disc_weight).

    python -m t5x_lite.train --config=configs/default.py --workdir=/tmp/run \
        --config.train.num_steps=100
"""
import ml_collections

from t5x_lite import model_config
from t5x_lite import objectives


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()

  # ---- model: t5x_lite/model_config.py; sizes from configs/models.py ---------
  c.model = model_config.model_config_dict()

  # ---- objective: what is learned ('' = the task's; t5x_lite/objectives/) ----
  c.objective = objectives.config_group()

  # ---- task: a registered seqio task or mixture ------------------------------
  c.task = ml_collections.ConfigDict(dict(
      name='shakespeare_span_corruption',  # see t5x_lite.tasks.registered_names()
      feature_lengths=ml_collections.ConfigDict(dict(inputs=512, targets=114)),
      pack=True,  # pack several examples per row (segment ids + positions)
      shuffle=True,
      shuffle_buffer_size=10000,
      train_split='train',
      eval_split='validation',
      use_cached=False,  # seqio cache (seqio.cache_tasks_main) if it was built
      # Python modules imported before the task is looked up (they register
      # tasks); --task_module=M adds to it. Saved with the run's config.
      modules=(),
  ))

  # ---- train ------------------------------------------------------------------
  c.train = ml_collections.ConfigDict(dict(
      num_steps=1000,
      batch_size=128,  # global, across every host and device
      seed=0,  # params init, dropout and data order
      microbatches=1,  # gradient accumulation: batch_size/microbatches per pass
      log_every_steps=50,
      z_loss=1e-4,  # coefficient of log(Z)^2
      label_smoothing=0.0,
      loss_normalizing_factor=0.0,  # 0: divide by real target tokens; else this constant
      skip_nonfinite_updates=False,  # True: drop a non-finite step and count it; False: stop
      max_consecutive_skipped_steps=5,  # skipping: more in a row stop the run (the params diverged); 0: no cap
      max_skipped_steps=0,  # skipping: more in all (earlier runs too) stop the run; 0: no cap
      data_iterator_checkpointing=True,  # save the input position with the state
      peak_flops_per_device=0.0,  # MFU denominator; 0: known accelerators' bf16 peak (CPU: no MFU)
      inject_nan_at_step=0,  # testing only: NaN loss weights in this step's batch (0: off)
  ))

  # ---- optimizer ----------------------------------------------------------------
  c.optimizer = ml_collections.ConfigDict(dict(
      name='adafactor',  # adafactor (T5 settings) | adamw
      learning_rate=1e-2,  # peak; rsqrt schedule: lr = min(lr, 1/sqrt(step)) scale
      schedule='rsqrt',  # rsqrt (T5) | linear | cosine | constant; all with warmup
      warmup_steps=1000,
      decay_steps=0,  # linear/cosine: total steps to decay over (0: train.num_steps)
      end_learning_rate_fraction=0.0,  # linear/cosine: final lr / peak lr
      grad_clip_norm=0.0,  # global-norm clipping; 0 disables
      weight_decay=0.0,  # adamw decoupled weight decay (adafactor: ignored unless set)
      b1=0.9,  # adamw first moment (adafactor: see adafactor_momentum)
      b2=0.999,  # adamw second moment
      eps=1e-8,  # adamw epsilon
      decay_rate=0.8,  # adafactor second-moment decay exponent (T5)
      clipping_threshold=1.0,  # adafactor update clipping (T5)
      multiply_by_parameter_scale=True,  # adafactor relative step (T5)
      factored=True,  # adafactor factored second moments
      min_dim_size_to_factor=128,  # adafactor: factor arrays whose two largest dims are >= this
      adafactor_momentum=0.0,  # adafactor first-moment decay; 0 (T5) keeps no momentum
  ))

  # ---- mesh: ('data', 'fsdp', 'tensor'); -1 fills with the remaining devices ----
  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,
      fsdp=1,
      tensor=1,
      dcn_data=1,  # multi-slice: data parallelism across slices (DCN), outermost
      dcn_fsdp=1,  # multi-slice: fsdp across slices
      # Logical axis name -> mesh axes. Data, not code: override as a whole.
      rules=(
          ('batch', ('data', 'fsdp')),
          ('vocab', 'tensor'),
          ('embed', 'fsdp'),
          ('mlp', 'tensor'),
          ('heads', 'tensor'),
          ('kv', None),
          ('joined_kv', 'tensor'),
          ('length', None),
          ('relpos_buckets', None),
          ('layers', None),
          ('classes', None),
      ),
  ))

  # ---- checkpoints -----------------------------------------------------------
  c.checkpoint = ml_collections.ConfigDict(dict(
      every_steps=1000,
      keep=3,  # newest N checkpoints are kept
      async_save=True,
      restore_from='',  # params-only init from this checkpoint dir (fine-tuning)
      # with restore_from: param path prefixes (comma-separated, e.g.
      # 'classifier') initialised fresh instead of restored; the objective's
      # own new heads (Objective.fresh_params) are always fresh
      fresh_params='',
  ))

  # ---- eval -------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict(dict(
      every_steps=1000,
      num_batches=10,  # teacher-forced loss batches per eval; -1: the whole split
      batch_size=0,  # 0: train.batch_size
      num_decode_examples=4,  # decoded samples printed and logged per eval
      max_examples=0,  # seqio.Evaluator examples per task; 0: all
  ))

  # ---- decoding (eval and infer) ---------------------------------------------
  c.decoding = ml_collections.ConfigDict(dict(
      method='greedy',  # greedy | sample | beam
      beam_size=4,
      alpha=0.6,  # beam length penalty ((5+len)/6)**alpha
      temperature=1.0,
      top_k=0,  # 0: off
      top_p=1.0,  # 1.0: off
      max_decode_length=64,
      seed=0,
      eos_id=1,  # ends a decode; 1 for T5/SentencePiece vocabularies
  ))

  # ---- adversarial training on the embeddings (t5x_lite/adversarial.py) ----
  c.adversarial = ml_collections.ConfigDict(dict(
      method='',  # '' (off) | fgm | pgd (FreeLB-style: params grads of every ascent step)
      epsilon=1.0,  # radius of the perturbation: l2 per example's [len, embed], or linf
      steps=1,  # pgd ascent steps (fgm: 1); each is one more forward+backward
      step_size=0.0,  # pgd ascent step (alpha); 0: epsilon
      norm='l2',  # l2 (over each example's embedded sequence) | linf (per element)
      weight=1.0,  # loss = clean + weight * adversarial
      perturb_decoder=False,  # encoder-decoder: also the decoder's input embeddings
  ))

  # ---- multi-host (jax.distributed); empty means single process or auto-detect ----
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address='',  # host:port of process 0
      num_processes=0,  # 0: from the environment or 1
      process_id=-1,  # -1: from the environment or 0
  ))

  # ---- compile: JAX's persistent compilation cache (t5x_lite/compile_cache.py) ----
  c.compile = ml_collections.ConfigDict(dict(
      # 'auto': $XDG_CACHE_HOME/t5x_lite/jax (else ~/.cache/t5x_lite/jax);
      # '' turns it off; else a directory. A restart reads its programs back.
      cache_dir='auto',
  ))
  return c
