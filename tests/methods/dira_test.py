"""DiRA: the distortions, the critic's shape, the critic's optimiser in
checkpoints (bit-for-bit resume), the two-stage switch, and the U-Net body
handed to a real fine-tuning run, and the restoration and critic losses on
1 and 8 devices."""
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trees_close_to_scale, assert_trees_equal
from conftest import finetune_from_frozen
from conftest import resume_after_kill, saved_state, smoke_config
from medclr.augment import distortions
from medclr.methods import dira
from medclr.train import pretrain

DRAWS = 2000


def _image(size=96):
  rng = np.random.default_rng(0)
  return jnp.asarray(0.1 + 0.9 * rng.uniform(size=(size, size, 3)),
                     jnp.float32)


def test_modes_follow_the_reference_probabilities():
  image = _image(32)
  modes = jax.vmap(lambda k: distortions.distort(k, image)[1])(
      jax.random.split(jax.random.key(0), DRAWS))
  freq = np.bincount(np.asarray(modes), minlength=4) / DRAWS
  np.testing.assert_allclose(freq, [0.30, 0.05, 0.30, 0.35], atol=0.03)


def test_painting_zeroes_pixels_and_shuffling_moves_them():
  image = _image()
  outs, modes = jax.jit(jax.vmap(lambda k: distortions.distort(k, image)))(
      jax.random.split(jax.random.key(3), 40))
  seen = set()
  for out, mode in zip(np.asarray(outs), np.asarray(modes)):
    mode = int(mode)
    seen.add(mode)
    changed = np.any(out != np.asarray(image), axis=-1)
    if mode in (0, 1):  # in- and out-painting only zero pixels
      assert np.all(out[changed] == 0) and changed.any()
      # Out-painting keeps large windows; in-painting holes are smaller.
      kept = 1 - changed.mean()
      assert kept < 0.9 if mode == 1 else kept > 0.3
    elif mode == 2:  # shuffled pixels come from the image, never zero
      assert changed.any() and np.all(out > 0)
    else:
      assert not changed.any()
  assert seen == {0, 1, 2, 3}


def test_distortions_are_the_same_on_1_and_8_devices():
  images = jax.random.uniform(jax.random.key(1), (8, 32, 32, 3))
  outs = []
  for n in (1, 8):
    mesh = jax.make_mesh((n,), ("data",),
                         axis_types=(jax.sharding.AxisType.Explicit,))
    with jax.set_mesh(mesh):
      x = jax.device_put(images, jax.P("data"))
      outs.append(np.asarray(jax.jit(distortions.sharded_distort)(
          jax.random.key(2), x)))
  np.testing.assert_array_equal(outs[0], outs[1])


def test_critic_scores_28x28_patches_of_a_224_image():
  critic = dira.PatchCritic(1, rngs=nnx.Rngs(0))
  assert critic(jnp.zeros((2, 224, 224, 1))).shape == (2, 28, 28, 1)


STEPS, KILLED_AFTER = 4, 2


def _config(data_dir):
  # The critic switches on after step 2: the resume crosses the switch.
  return smoke_config("pretrain_dira", data_dir, num_steps=STEPS,
                      checkpoint_every=1, keep_checkpoints=10,
                      async_checkpoints=False,
                      **{"dira.adversarial_start": 2})


@pytest.fixture(scope="module")
def dira_run(tmp_path_factory, phantom_data_dir):
  workdir = tmp_path_factory.mktemp("dira") / "full"
  pretrain.train_and_evaluate(_config(phantom_data_dir), str(workdir))
  return workdir


def test_critic_waits_for_stage_two_then_trains(dira_run):
  states = [saved_state(dira_run, step)[0]["aux"]["critic"]
            for step in (1, 2, 3)]
  assert_trees_equal(states[1], states[0])  # stage 1: untouched
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(states[1]), jax.tree.leaves(states[2])))


def test_resume_restores_critic_and_its_optimiser(dira_run, tmp_path,
                                                  phantom_data_dir):
  want = resume_after_kill(
      dira_run, tmp_path / "killed", KILLED_AFTER,
      lambda w: pretrain.train_and_evaluate(_config(phantom_data_dir), w))
  assert {"critic", "critic_opt", "queue", "target_params"} <= set(
      want["aux"])


def test_finetuning_starts_from_the_whole_unet_body(dira_run, tmp_path,
                                                    phantom_data_dir):
  pretrained, tuned = finetune_from_frozen(
      phantom_data_dir, dira_run, tmp_path / "ft", "encoder,decoder")
  assert_trees_equal(tuned["encoder"], pretrained["encoder"])
  assert_trees_equal(tuned["decoder"], pretrained["decoder"])


def _restoration_grads(num_devices, restored, target, critic_params,
                       graphdef):
  """Generator (10 MSE + 0.001 LS fooling) and critic losses, with their
  gradients w.r.t. the restorations and the critic, on a sharded batch."""
  mesh = jax.make_mesh((num_devices,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    shard = jax.sharding.NamedSharding(mesh, jax.P("data"))
    r, t = (jax.device_put(x, shard) for x in (restored, target))
    params = jax.device_put(critic_params, jax.P())

    @jax.jit
    def f(r, t, params):
      def generator(r):
        critic = nnx.merge(graphdef, jax.lax.stop_gradient(params))
        return (10 * jnp.mean((r - t) ** 2) +
                0.001 * jnp.mean((critic(r) - 1.0) ** 2))
      def critic(params):
        return dira.critic_loss(nnx.merge(graphdef, params), t, r)
      return (jax.value_and_grad(generator)(r),
              jax.value_and_grad(critic)(params))

    return jax.device_get(f(r, t, params))


def test_restoration_and_critic_losses_equal_on_1_and_8_devices():
  critic = dira.PatchCritic(3, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(critic, nnx.Param)
  params = nnx.to_pure_dict(params)
  keys = jax.random.split(jax.random.key(5))
  restored = jax.random.uniform(keys[0], (8, 16, 16, 3))
  target = jax.random.uniform(keys[1], (8, 16, 16, 3))
  one = _restoration_grads(1, restored, target, params, graphdef)
  eight = _restoration_grads(8, restored, target, params, graphdef)
  for (loss1, grad1), (loss8, grad8) in zip(one, eight):
    assert float(loss8) == pytest.approx(float(loss1), rel=1e-5)
    # Relative to the largest gradient entry: the bias before an instance
    # norm has a gradient of pure rounding noise.
    assert_trees_close_to_scale(grad8, grad1, 1e-4, per_leaf=False)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(one[1][1])) > 0
