"""Chaitanya et al.'s local (decoder-stage) loss and its two-launch recipe.

The loss against a NumPy loop written from the reference's formulation, and
on 1 and 8 devices; real runs: stage 2 reads stage 1's encoder and never
moves it, resumes bit for bit, and hands encoder and trained decoder levels
unchanged to a real fine-tuning run.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_trees_equal, finetune_from_frozen
from conftest import resume_after_kill, saved_state, saved_subtrees
from conftest import smoke_config
from medclr import errors
from medclr import methods
from medclr.methods import chaitanya_local
from medclr.train import pretrain

TAU = 0.1


def _numpy_local_loss(f1, f2, weight):
  """Per image and region: gather 3x3, flatten, x W, cosine / tau;
  -log(e^pos / (e^pos + sum over 5 negatives of both views))."""
  pos, neg = chaitanya_local.region_table(*f1.shape[1:3])

  def vec(f, i, rc):
    r, c = rc
    v = f[i, r:r + 3, c:c + 3, :].reshape(-1).astype(np.float64) @ weight
    return v / np.linalg.norm(v)

  total = 0.0
  for i in range(f1.shape[0]):
    for k in range(len(pos)):
      for a, b in ((f1, f2), (f2, f1)):
        za, zb = vec(a, i, pos[k]), vec(b, i, pos[k])
        num = np.exp(za @ zb / TAU)
        den = num + sum(np.exp(za @ vec(a, i, n) / TAU) +
                        np.exp(za @ vec(b, i, n) / TAU) for n in neg[k])
        total += -np.log(num / den)
  return total / len(pos) / f1.shape[0]


def _maps(seed=0, shape=(8, 12, 12, 4)):
  rng = np.random.default_rng(seed)
  f1 = rng.standard_normal(shape).astype(np.float32)
  f2 = (f1 + 0.5 * rng.standard_normal(shape)).astype(np.float32)
  weight = rng.standard_normal((9 * shape[-1], 16)).astype(np.float32)
  return f1, f2, weight


def test_loss_matches_numpy_reference():
  f1, f2, weight = _maps()
  got = chaitanya_local.local_loss(jnp.asarray(f1), jnp.asarray(f2),
                                   lambda x: x @ jnp.asarray(weight), TAU)
  assert float(got) == pytest.approx(_numpy_local_loss(f1, f2, weight),
                                     rel=1e-5)


def test_region_table_stays_inside_the_map_and_apart_from_its_positive():
  for size in (8, 12, 45):
    pos, neg = chaitanya_local.region_table(size, size)
    assert pos.shape == (13, 2) and neg.shape == (13, 5, 2)
    assert pos.min() >= 0 and pos.max() + 3 <= size
    assert neg.min() >= 0 and neg.max() + 3 <= size
    if size >= 12:  # distinct corners once the grid is wide enough
      assert len({tuple(p) for p in pos}) == 13
      for p, ns in zip(pos, neg):
        assert all(tuple(n) != tuple(p) for n in ns)
  with pytest.raises(errors.ConfigError, match="at least 8x8"):
    chaitanya_local.region_table(6, 6)


def _loss_and_grad(num_devices, f1, f2, weight):
  mesh = jax.make_mesh((num_devices,), ("data",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  with jax.set_mesh(mesh):
    shard = jax.sharding.NamedSharding(mesh, jax.P("data"))
    a, b = (jax.device_put(jnp.asarray(x), shard) for x in (f1, f2))

    @jax.jit
    def f(a, b, w):
      return jax.value_and_grad(
          lambda a, w: chaitanya_local.local_loss(a, b, lambda x: x @ w, TAU),
          argnums=(0, 1))(a, w)

    loss, (grad_f, grad_w) = f(a, b, jnp.asarray(weight))
    return float(loss), np.asarray(grad_f), np.asarray(grad_w)


def test_loss_and_gradients_equal_on_1_and_8_devices():
  inputs = _maps(1)
  one = _loss_and_grad(1, *inputs)
  eight = _loss_and_grad(8, *inputs)
  assert eight[0] == pytest.approx(one[0], rel=1e-5)
  for got, want in zip(eight[1:], one[1:]):
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


STEPS, KILLED_AFTER = 3, 1


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory, phantom_data_dir, pretrained_dir):
  """Stage 2 (local loss) run from the shared stage-1 smoke checkpoint."""
  workdir = tmp_path_factory.mktemp("local") / "full"
  config = _local_config(phantom_data_dir, pretrained_dir)
  pretrain.train_and_evaluate(config, str(workdir))
  return pretrained_dir, workdir


def _local_config(data_dir, pretrain_dir):
  return smoke_config(
      "pretrain_chaitanya_local", data_dir, num_steps=STEPS,
      checkpoint_every=1, keep_checkpoints=10, async_checkpoints=False,
      **{"init.pretrain_dir": pretrain_dir})


def test_stage_two_keeps_stage_one_encoder_and_trains_the_decoder(
    two_stages):
  stage1, stage2 = two_stages
  first = saved_subtrees(stage1, 2, parts=("params",))["params"]["encoder"]
  start, _ = saved_state(stage2, 1)
  end, _ = saved_state(stage2, STEPS)
  assert_trees_equal(end["params"]["encoder"], first)
  assert set(end["params"]["decoder"]) == {"level1"}
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(start["params"]["decoder"]),
      jax.tree.leaves(end["params"]["decoder"])))


def test_stage_two_resumes_bit_for_bit(two_stages, tmp_path,
                                       phantom_data_dir):
  stage1, stage2 = two_stages
  resume_after_kill(
      stage2, tmp_path / "killed", KILLED_AFTER,
      lambda w: pretrain.train_and_evaluate(
          _local_config(phantom_data_dir, stage1), w))


def test_finetuning_starts_from_encoder_and_trained_decoder_levels(
    two_stages, tmp_path, phantom_data_dir):
  _, stage2 = two_stages
  pretrained, tuned = finetune_from_frozen(
      phantom_data_dir, stage2, tmp_path / "ft", "encoder,decoder")
  assert_trees_equal(tuned["encoder"], pretrained["encoder"])
  assert_trees_equal(tuned["decoder"]["level1"],
                     pretrained["decoder"]["level1"])
  assert "level0" in tuned["decoder"]  # fresh, and trained from scratch


def test_host_cuts_one_crop_the_same_as_the_first_of_two(phantom_data_dir):
  """The local stage views one crop twice, so the host cuts only that one:
  the same crop the two-view pipeline cuts first."""
  from medclr.data import pipeline  # pylint: disable=g-import-not-at-top
  config = smoke_config("pretrain_chaitanya_local", phantom_data_dir)
  method = chaitanya_local.ChaitanyaLocal(config)
  one = next(iter(method.host_dataset(config, local_batch=2)))
  assert set(one) - {"norm"} == {"view1"}
  two = next(iter(pipeline.pretrain_dataset(
      phantom_data_dir, config.data.sources,
      image_size=config.data.image_size, in_channels=config.data.in_channels,
      area=method.spec.crop_area, aspect=method.spec.crop_aspect,
      local_batch=2, seed=config.seed,
      preprocess=methods.pretrain_preprocess(config))))
  np.testing.assert_array_equal(one["view1"], two["view1"])
