"""BYOL's and DINO's real pretraining steps give the same update on 1 and 8
devices (the decoder-pretraining losses have their own 1-vs-8 tests:
chaitanya_local_test, macl_test, dira_test, pixel_contrast_test).

Each step runs with plain SGD at rate 1, so the parameter update is the raw
gradient: LARS or AdamW would normalise away a wrong gradient scale (a psum
where a mean belongs). The batch is a real one from the method's own host
pipeline on the phantom. BatchNorm statistics and the auxiliary state (EMA
target, DINO centre) must agree too.
"""
from flax import nnx
import jax
import numpy as np
import optax
import pytest

from conftest import assert_trees_close_to_scale, smoke_config
from medclr import methods
from medclr import models
from medclr import sharding
from medclr.train import steps

# Of each part's largest entry: summing the batch in another order moves
# these by ~1e-4; a device-count-dependent scale moves them by 100% or more.
TOLERANCE = 1e-3


def _step_on(num_devices, config, method, batch):
  model = method.make_model(nnx.Rngs(config.seed))
  graphdef, params, stats = models.split_model(model)
  tx = optax.sgd(1.0)
  step_fn = steps.make_pretrain_step(graphdef, tx, lambda step: 1.0, method,
                                     seed=0)
  mesh = sharding.make_mesh(num_devices)
  with jax.set_mesh(mesh):
    state = jax.device_put(steps.init_state(
        params, stats, tx, method.init_aux(params, stats)), jax.P())
    new_state, metrics = jax.jit(step_fn)(state,
                                          sharding.to_global(batch, mesh))
    update = jax.tree.map(lambda new, old: new - old, new_state["params"],
                          state["params"])
    return jax.device_get((update, new_state, metrics))


@pytest.mark.parametrize("name, overrides", [
    ("pretrain_byol", {}), ("pretrain_dino", {}),
])
def test_step_update_is_the_same_on_1_and_8_devices(name, overrides,
                                                    phantom_data_dir):
  config = smoke_config(name, phantom_data_dir, **overrides)
  method = methods.get_method(config)
  method.prepare_data(config)
  batch = next(iter(method.host_dataset(config, config.batch_size)))
  (up1, state1, m1), (up8, state8, m8) = (
      _step_on(n, config, method, batch) for n in (1, 8))
  np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
  assert max(float(np.abs(u).max()) for u in jax.tree.leaves(up1)) > 0
  assert_trees_close_to_scale(up8, up1, TOLERANCE, per_leaf=False)
  for part in ("batch_stats", "aux"):
    assert jax.tree.leaves(state1[part]), part
    assert_trees_close_to_scale(state8[part], state1[part], TOLERANCE,
                                per_leaf=False)
