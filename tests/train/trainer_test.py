"""The shared trainer setup: the learning rate is an input of the step."""
import json
import pathlib

import jax
import numpy as np

from conftest import smoke_config
from medclr import optim
from medclr import sharding
from medclr.train import loop
from medclr.train import pretrain
from medclr.train import trainer


def _step_program(config):
  """The lowered text of `config`'s jitted pretraining step."""
  phase = pretrain.Pretraining(config, workdir=None)
  mesh = sharding.make_mesh(config.mesh.data)
  batches = phase.data_iter(sharding.check_batch_size(config.batch_size,
                                                      mesh))
  tx, _ = optim.make_optimizer(config.optim, config.num_steps,
                               config.batch_size)
  with jax.set_mesh(mesh):
    graphdef, abstract, _ = loop.init_state(phase.make_model, tx, mesh,
                                            config.seed, phase.make_aux())
    batch = sharding.to_global(next(batches), mesh)
    step = trainer.jit_step(phase, graphdef, config)
    return step.lower(abstract, batch, np.float32(0.1)).as_text()


def test_runs_that_differ_only_in_their_schedule_share_one_step_program(
    phantom_data_dir):
  """Run length, base rate, warm-up and schedule stay out of the program, so
  a longer or resumed run reuses the compiled step (XLA's cache)."""
  short = smoke_config("pretrain_simclr", phantom_data_dir, num_steps=2)
  longer = smoke_config("pretrain_simclr", phantom_data_dir, num_steps=7,
                        **{"optim.learning_rate": 0.3,
                           "optim.warmup_steps": 2,
                           "optim.schedule": "constant"})
  assert _step_program(short) == _step_program(longer)


def test_each_step_logs_its_scheduled_rate(pretrained_dir):
  """The rate the loop passes is the schedule's at that step."""
  config = smoke_config("pretrain_simclr", "unused")
  lr_fn = optim.learning_rate_fn(config.optim, config.num_steps,
                                 config.batch_size)
  want = [float(lr_fn(step)) for step in range(config.num_steps)]
  assert len(set(want)) == config.num_steps  # a cosine: no two alike
  rows = [json.loads(line) for line in
          pathlib.Path(pretrained_dir, "metrics.jsonl").read_text().splitlines()]
  logged = {row["step"]: row["lr"] for row in rows if "lr" in row}
  assert [logged[step + 1] for step in range(config.num_steps)] == want
  np.testing.assert_array_equal(
      optim.schedule_values(lr_fn, config.num_steps), np.float32(want))


def _step_traces(run):
  """How often `run()` traced a train step (a function named `step`)."""
  traced = []

  def listen(event, duration, **kwargs):
    del duration
    if (event == "/jax/core/compile/jaxpr_trace_duration"
        and kwargs.get("fun_name") == "step"):
      traced.append(event)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    return run(), len(traced)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


def test_a_run_with_the_same_settings_reuses_the_traced_step(
    phantom_data_dir, tmp_path):
  """In one process (a notebook, a resume), the second run of a config
  neither traces nor lowers its step again, and trains the same numbers;
  another setting gets its own step."""
  config = smoke_config("pretrain_simclr", phantom_data_dir, seed=5)
  first, traced = _step_traces(
      lambda: pretrain.train_and_evaluate(config, str(tmp_path / "a")))
  assert traced == 1
  config.log_every = 2  # the cadence is not part of the program
  again, traced = _step_traces(
      lambda: pretrain.train_and_evaluate(config, str(tmp_path / "b")))
  assert traced == 0
  assert again == first
  config.loss.temperature = 0.5
  other, traced = _step_traces(
      lambda: pretrain.train_and_evaluate(config, str(tmp_path / "c")))
  assert traced == 1 and other["loss"] != first["loss"]
