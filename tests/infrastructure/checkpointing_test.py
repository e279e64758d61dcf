"""Saving from one process: replicated arrays are written whole."""
import grain
import jax
import jax.numpy as jnp
import numpy as np

from conftest import saved_state
from medclr import checkpointing
from medclr import sharding


def test_one_process_saves_replicated_arrays_without_slicing_them(tmp_path):
  """Orbax's replica-parallel split compiles one slice program per array
  shape, about 50 ms each on a CPU; one process has one host to write
  through, so a save there compiles nothing and restores what it saved."""
  mesh = sharding.make_mesh(8)
  # Shapes no other test uses (a slice compiled earlier would be cached),
  # each with an axis the 8 replicas could split.
  state = jax.device_put(
      {"w": jnp.arange(40 * 3, dtype=jnp.float32).reshape(40, 3),
       "b": jnp.linspace(0.0, 1.0, 56)},
      jax.sharding.NamedSharding(mesh, jax.P()))
  data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
  compiled = []

  def on_span(event, start, end, **kwargs):
    del start, end
    if event.endswith("backend_compile_duration"):
      compiled.append(kwargs.get("fun_name"))

  ckpt = checkpointing.Checkpointer(tmp_path, save_every=1, keep=1,
                                    async_save=False)
  jax.monitoring.register_event_time_span_listener(on_span)
  try:
    ckpt.save(1, state, data_iter, {"seed": 0})
    ckpt.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_time_span_listener(on_span)
    ckpt.close()
  assert not compiled, compiled
  restored, _ = saved_state(tmp_path, 1)
  np.testing.assert_array_equal(restored["w"], state["w"])
  np.testing.assert_array_equal(restored["b"], state["b"])
