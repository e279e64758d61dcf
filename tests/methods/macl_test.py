"""MACL: the pixel-level SupCon against a NumPy loop, 1 vs 8 devices, and
real runs that resume bit for bit and hand encoder and decoder levels to a
real fine-tuning run."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trees_equal, finetune_from_frozen
from conftest import resume_after_kill, smoke_config
from medclr.methods import macl
from medclr.methods import volume_supcon
from medclr.train import pretrain

SPEC = volume_supcon.LossSpec(positives="pcl", temperature=0.1, threshold=0.1,
                              tau_base=0.07)


def _numpy_supcon(z1, z2, position):
  """PCL SupCon: views [z1; z2]; positives other views whose slice
  positions differ by < threshold; mean log-prob over positives, scaled by
  tau / tau_base."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  pos = np.concatenate([position, position])
  n = len(z)
  total = 0.0
  for i in range(n):
    logits = z @ z[i] / SPEC.temperature
    others = [k for k in range(n) if k != i]
    log_den = np.log(np.sum(np.exp(logits[others])))
    positives = [k for k in others if abs(pos[k] - pos[i]) < SPEC.threshold]
    total += -np.mean([logits[k] - log_den for k in positives])
  return SPEC.scale * total / n


def _maps(seed=0, shape=(8, 3, 3, 5)):
  rng = np.random.default_rng(seed)
  p1 = rng.standard_normal(shape).astype(np.float32)
  p2 = (p1 + rng.standard_normal(shape)).astype(np.float32)
  position = rng.uniform(size=shape[0]).astype(np.float32)
  labels = {"partition": jnp.zeros(shape[0], jnp.int32),
            "position": jnp.asarray(position)}
  return p1, p2, position, labels


def test_pixel_supcon_matches_numpy_loop_over_locations():
  p1, p2, position, labels = _maps()
  got = macl.pixel_supcon(jnp.asarray(p1), jnp.asarray(p2), labels, SPEC)
  want = np.mean([_numpy_supcon(p1[:, y, x], p2[:, y, x], position)
                  for y in range(p1.shape[1]) for x in range(p1.shape[2])])
  assert float(got) == pytest.approx(want, rel=1e-5)


def _pixel_grads(num_devices, p1, p2, labels):
  mesh = jax.make_mesh((num_devices,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    shard = jax.sharding.NamedSharding(mesh, jax.P("data"))
    a, b = (jax.device_put(jnp.asarray(x), shard) for x in (p1, p2))
    lab = jax.tree.map(lambda x: jax.device_put(x, shard), labels)

    @jax.jit
    def f(a, b, lab):
      def total(a, b):
        # L_d and L_ER both differentiated, as in the step.
        return (macl.pixel_supcon(a, b, lab, SPEC) +
                jnp.mean(jnp.abs(macl.downscale(a, 1 / 3) - b[:, :1, :1])))
      return jax.value_and_grad(total, argnums=(0, 1))(a, b)

    loss, grads = f(a, b, lab)
    return float(loss), [np.asarray(g) for g in grads]


def test_pixel_and_equivariance_losses_equal_on_1_and_8_devices():
  p1, p2, _, labels = _maps(1)
  loss1, grads1 = _pixel_grads(1, p1, p2, labels)
  loss8, grads8 = _pixel_grads(8, p1, p2, labels)
  assert loss8 == pytest.approx(loss1, rel=1e-5)
  for got, want in zip(grads8, grads1):
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


STEPS, KILLED_AFTER = 3, 1


def _config(data_dir):
  return smoke_config("pretrain_macl", data_dir, num_steps=STEPS,
                      checkpoint_every=1, keep_checkpoints=10,
                      async_checkpoints=False)


@pytest.fixture(scope="module")
def macl_run(tmp_path_factory, phantom_data_dir):
  workdir = tmp_path_factory.mktemp("macl") / "full"
  pretrain.train_and_evaluate(_config(phantom_data_dir), str(workdir))
  return workdir


def test_resumes_bit_for_bit_and_logs_each_term(macl_run, tmp_path,
                                                phantom_data_dir):
  resume_after_kill(
      macl_run, tmp_path / "killed", KILLED_AFTER,
      lambda w: pretrain.train_and_evaluate(_config(phantom_data_dir), w))
  text = (macl_run / "metrics.jsonl").read_text()
  for key in ("global_loss", "pixel_loss", "er_loss"):
    assert f'"{key}"' in text


def test_finetuning_starts_from_encoder_and_decoder_levels(
    macl_run, tmp_path, phantom_data_dir):
  pretrained, tuned = finetune_from_frozen(
      phantom_data_dir, macl_run, tmp_path / "ft", "encoder,decoder")
  assert_trees_equal(tuned["encoder"], pretrained["encoder"])
  assert set(pretrained["decoder"]) == {"level0", "level1"}
  assert_trees_equal(tuned["decoder"], pretrained["decoder"])
