"""The train step of a config on one device, as the trainer builds it: what
the objective tests train a few steps with, without the loop around it.

    from one_device_step import train_state_and_step
    state, step = train_state_and_step(config)
    state, metrics = step(state, batch, jax.random.PRNGKey(1))
"""
import jax

from t5x_lite import objectives
from t5x_lite import optimizers
from t5x_lite import partitioning
from t5x_lite import run_config
from t5x_lite import trainer


def train_state_and_step(config, model=None):
  """(initial TrainState, jitted train_step) for `config` on jax.devices()[0];
  `model` defaults to objectives.build_model(config)."""
  model = model or objectives.build_model(config)
  tx, schedule = optimizers.make_optimizer(
      run_config.OptimizerConfig.from_config(config))
  mesh = partitioning.make_mesh(config.mesh, jax.devices()[:1])
  rules = partitioning.logical_rules(config.mesh.rules)
  state, shardings = trainer.create_train_state(
      model, tx, mesh, rules, dict(config.task.feature_lengths),
      jax.random.PRNGKey(0))
  step = trainer.make_train_step(
      model, tx, run_config.StepConfig.from_config(config), mesh, rules,
      shardings, partitioning.batch_sharding(mesh, rules), schedule=schedule)
  return state, step
