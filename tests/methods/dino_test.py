"""Tests for DINO (medclr.methods.dino, configs/pretrain_dino.py).

The loss against main_dino.py's DINOLoss written out pair by pair, the
teacher-temperature and centre updates, the weight-normalised last layer and
its freezing, the crop presets, and one end-to-end smoke run on the phantom
that checks the teacher EMA between checkpoints, resume (teacher and centre
restored) on 1 device against the 8-device run, and fine-tuning.
"""
import importlib
import math
import shutil

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import finetune_unet
from conftest import (assert_trees_close, assert_trees_equal, finetune_from,
                      saved_state, saved_subtrees, smoke_config)
from medclr import errors
from medclr import models
from medclr.augment import crop_presets
from medclr.methods import dino
from medclr.train import pretrain


BATCH = 4


def _saved(workdir, step):
  return saved_subtrees(workdir, step, ("params", "aux"))


def _config(**overrides):
  # Unit tests read no data; the smoke config's tiny model is what matters.
  return smoke_config("pretrain_dino", "unused", **overrides)


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _reference_dino_loss(student_crops, teacher_crops, center, student_temp,
                         teacher_temp):
  """main_dino.py DINOLoss.forward, one (teacher, student) pair at a time."""
  total, terms = 0.0, 0
  for iq, teacher in enumerate(teacher_crops):
    q = _softmax((np.float64(teacher) - center) / teacher_temp)
    for v, student in enumerate(student_crops):
      if v == iq:
        continue  # the student never matches the teacher on the same crop
      log_p = np.log(_softmax(np.float64(student) / student_temp))
      total += np.mean(np.sum(-q * log_p, axis=-1))
      terms += 1
  return total / terms


@pytest.mark.parametrize("arg", ["", "smoke", "quick", "quick,multicrop=weak",
                                 "multicrop=strong,preset=basic_medical"])
def test_config_loads_and_locks(arg):
  config = importlib.import_module("configs.pretrain_dino").get_config(
      arg or None)
  assert isinstance(config, ml_collections.ConfigDict)
  config.lock()
  with pytest.raises(AttributeError):
    config.multicrop.global_scal = (0.5, 1.0)  # a typo must not create a field
  preset = dino.resolve_multicrop(config.multicrop)
  assert preset == crop_presets.CROP_PRESETS[config.multicrop.preset]
  method = dino.DINO(config)  # validates the whole config
  assert method.local_size % 2 ** (len(config.model.widths) - 1) == 0
  if "quick" in arg:  # the fine-tune quick profile expects these
    finetune_quick = finetune_unet.get_config("quick")
    assert config.model.widths == finetune_quick.model.widths
    assert config.data.image_size == finetune_quick.data.crop_size


def test_unknown_multicrop_argument_is_named():
  with pytest.raises(ValueError, match="multicrop preset 'wek'"):
    importlib.import_module("configs.pretrain_dino").get_config(
        "multicrop=wek")


def test_loss_matches_dino_loss_pair_by_pair():
  keys = jax.random.split(jax.random.key(0), 3)
  student = 3 * jax.random.normal(keys[0], (BATCH, 5, 16))
  teacher = 3 * jax.random.normal(keys[1], (BATCH, 2, 16))
  center = jax.random.normal(keys[2], (1, 16))
  loss, probs = dino.dino_loss(student, teacher, center, 0.1, 0.05)
  want = _reference_dino_loss(
      [student[:, v] for v in range(5)], [teacher[:, i] for i in range(2)],
      np.float64(center), 0.1, 0.05)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(
      probs, _softmax((np.float64(teacher) - center) / 0.05), rtol=1e-4,
      atol=1e-7)
  # Two views only: each teacher crop is matched to the other one.
  two, _ = dino.dino_loss(student[:, :2], teacher, center, 0.1, 0.05)
  np.testing.assert_allclose(two, _reference_dino_loss(
      [student[:, 0], student[:, 1]], [teacher[:, 0], teacher[:, 1]],
      np.float64(center), 0.1, 0.05), rtol=1e-5)


@pytest.mark.parametrize("warmup_steps", [0, 1, 5])
def test_teacher_temperature_is_linspace_then_constant(warmup_steps):
  schedule = np.concatenate([np.linspace(0.04, 0.07, warmup_steps),
                             np.full(10 - warmup_steps, 0.07)])
  got = [float(dino.teacher_temperature(jnp.int32(k), 0.04, 0.07,
                                        warmup_steps)) for k in range(10)]
  np.testing.assert_allclose(got, schedule, rtol=1e-6)


def test_center_is_ema_of_global_batch_mean():
  teacher = jax.random.normal(jax.random.key(1), (BATCH, 2, 8))
  center = jnp.ones((1, 8))
  want = 0.9 * 1.0 + 0.1 * np.mean(np.asarray(teacher).reshape(-1, 8), axis=0)
  np.testing.assert_allclose(dino.updated_center(center, teacher, 0.9),
                             want[None], rtol=1e-5)


@pytest.mark.parametrize("learn_scale", [False, True])
def test_last_layer_is_weight_normalised(learn_scale):
  layer = dino.WeightNormLinear(6, 10, learn_scale=learn_scale,
                                rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(layer, nnx.Param))
  assert sorted(params) == (["direction", "scale"] if learn_scale else
                            ["direction"])
  if learn_scale:
    layer.scale[...] = jnp.full((10,), 2.0)
  # Rows of the identity read out the effective weight w = g v / |v|.
  weight = np.asarray(layer(jnp.eye(6)))
  np.testing.assert_allclose(np.linalg.norm(weight, axis=0),
                             2.0 if learn_scale else 1.0, rtol=1e-5)


def test_head_with_batch_norm_matches_numpy():
  """DINOHead(use_bn=True): Linear -> BatchNorm1d -> GELU per hidden layer."""
  head = dino.DINOHead(6, 10, hidden_dim=8, bottleneck_dim=5,
                       num_layers=3, norm_last_layer=True, use_bn=True,
                       rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(head, nnx.Param))
  assert sorted(params) == ["last_layer", "layer0", "layer1", "layer2",
                            "norm0", "norm1"]
  # Non-trivial affine parameters so that a skipped scale or bias shows.
  head.norm1.scale[...] = jnp.linspace(0.5, 2.0, 8)
  head.norm1.bias[...] = jnp.linspace(-0.3, 0.3, 8)
  h = jax.random.normal(jax.random.key(1), (7, 6)) * 3.0 + 1.0
  got = np.asarray(head(h, train=True))

  gelu = lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))
  x = np.float64(h)
  for index in range(3):
    layer = params[f"layer{index}"]
    x = x @ np.float64(layer["kernel"]) + np.float64(layer["bias"])
    if index < 2:
      norm = getattr(head, f"norm{index}")
      x = (x - x.mean(0)) / np.sqrt(x.var(0) + norm.epsilon)
      x = x * np.float64(norm.scale[...]) + np.float64(norm.bias[...])
      x = gelu(x)
  x = x / np.linalg.norm(x, axis=-1, keepdims=True)
  v = np.float64(params["last_layer"]["direction"])
  want = x @ (v / np.linalg.norm(v, axis=0, keepdims=True))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # Evaluation uses the running statistics, which one step only nudged.
  assert not np.allclose(np.asarray(head(h, train=False)), got, atol=1e-3)


def test_crop_presets_and_custom_fields():
  multicrop = _config().multicrop
  assert dino.resolve_multicrop(multicrop) == crop_presets.CROP_PRESETS[
      "dino_default"]
  multicrop.global_scale = (0.5, 1.0)
  with pytest.raises(errors.ConfigError,
                     match="config.multicrop.global_scale"):
    dino.resolve_multicrop(multicrop)
  multicrop.preset = "custom"
  assert dino.resolve_multicrop(multicrop).global_scale == (0.5, 1.0)
  multicrop.preset = "weakest"
  with pytest.raises(errors.ConfigError, match="config.multicrop.preset"):
    dino.resolve_multicrop(multicrop)
  weak = crop_presets.CROP_PRESETS["weak"]
  default = crop_presets.CROP_PRESETS["dino_default"]
  assert weak.global_scale[0] > default.global_scale[0]
  assert weak.local_scale[0] > default.local_scale[0]
  assert all(w < d for w, d in zip(weak.jitter, default.jitter))


@pytest.mark.parametrize("image_size,levels,want", [
    (224, 5, 96), (128, 5, 48), (96, 5, 48), (32, 3, 12), (16, 5, 16)])
def test_default_local_size(image_size, levels, want):
  assert dino.default_local_size(image_size, levels) == want


def test_method_checks_local_size():
  assert dino.DINO(_config()).local_size == 12  # 32 * 96/224 -> 4 * 3
  with pytest.raises(errors.ConfigError,
                     match="config.multicrop.local_size=10"):
    dino.DINO(_config(**{"multicrop.local_size": 10}))


def test_view_specs_follow_dino_per_crop():
  config = _config()
  global1, global2, local = dino.view_specs(
      config.augment, dino.resolve_multicrop(config.multicrop))
  assert (global1.blur_p, global1.solarize_p) == (1.0, 0.0)
  assert (global2.blur_p, global2.solarize_p) == (0.1, 0.2)
  assert (local.blur_p, local.solarize_p) == (0.5, 0.0)
  for spec in (global1, global2, local):
    assert spec.jitter == (0.4, 0.4, 0.2, 0.1)
    assert (spec.jitter_p, spec.gray_p, spec.hflip_p) == (0.8, 0.2, 0.5)
    assert spec.brightness_mode == "multiply"
  weak = dino.view_specs(config.augment, crop_presets.CROP_PRESETS["weak"])
  assert weak[0].jitter == (0.2, 0.2, 0.1, 0.05)


def test_method_loss_centre_and_frozen_last_layer():
  """method.loss against separate forwards laid out as DINO lays them out."""
  config = _config()
  method = dino.DINO(config)
  graphdef, params, stats = models.split_model(method.make_model(nnx.Rngs(0)))
  aux = method.init_aux(params, stats)
  aux["center"] = 0.1 * jax.random.normal(jax.random.key(5), (1, 64))
  size, local, num_local = 32, method.local_size, method.num_local
  keys = jax.random.split(jax.random.key(2), 3)
  globals_ = jax.random.uniform(keys[0], (2, BATCH, size, size, 3))
  locals_ = jax.random.uniform(keys[1], (num_local, BATCH, local, local, 3))
  # device_views' layout: local crop j of image i at row i * N + j.
  views = [globals_[0], globals_[1],
           jnp.swapaxes(locals_, 0, 1).reshape((-1, local, local, 3))]

  @jax.jit
  def run(params, step):
    def loss_fn(params):
      model = nnx.merge(graphdef, params, stats)
      return method.loss(model, aux, views, step)

    (loss, (new_aux, metrics)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(params)
    # DINO's MultiCropWrapper: crops of one size concatenated crop-major,
    # one forward per size; the teacher sees the 2 global crops.
    student = nnx.merge(graphdef, params, stats)
    student_global, _ = student(globals_.reshape((-1, size, size, 3)),
                                train=True)
    student_local, _ = student(locals_.reshape((-1, local, local, 3)),
                               train=True)
    teacher = nnx.merge(method.teacher_graphdef, aux["teacher_params"],
                        aux["teacher_stats"])
    teacher_global, _ = teacher(globals_.reshape((-1, size, size, 3)),
                                train=True)
    outputs = (student_global, student_local, teacher_global)
    return loss, new_aux, metrics, grads, outputs

  loss, new_aux, metrics, grads, outputs = run(params, jnp.int32(0))
  student_global, student_local, teacher_global = (np.asarray(o) for o in
                                                   outputs)
  student_crops = (np.split(student_global, 2) +
                   np.split(student_local, num_local))
  teacher_crops = np.split(teacher_global, 2)
  center = np.float64(aux["center"])
  # Smoke warm-up is 1 step: linspace(0.04, 0.07, 1)[0] = 0.04 at step 0.
  assert float(metrics["teacher_temp"]) == pytest.approx(0.04)
  want = _reference_dino_loss(student_crops, teacher_crops, center, 0.1, 0.04)
  np.testing.assert_allclose(loss, want, rtol=1e-4)
  np.testing.assert_allclose(
      new_aux["center"],
      0.9 * center + 0.1 * teacher_global.mean(axis=0, keepdims=True),
      rtol=1e-4, atol=1e-7)
  probs = _softmax((np.float64(teacher_global) - center) / 0.04)
  entropy = np.mean(-np.sum(probs * np.log(np.maximum(probs, 1e-30)), -1))
  assert float(metrics["teacher_entropy"]) == pytest.approx(entropy, rel=1e-3)
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b),
                       new_aux["teacher_stats"], aux["teacher_stats"])
  assert all(jax.tree.leaves(moved))

  # freeze_last_layer_steps = 1: no gradient to the last layer at step 0,
  # one at step 1; the rest of the network learns at both.
  last_layer = lambda g: np.abs(g["head"]["last_layer"]["direction"]).max()
  first_conv = lambda g: np.abs(g["encoder"]["level0"]["conv0"]["kernel"]).max()
  assert last_layer(grads) == 0 and first_conv(grads) > 0
  grads = run(params, jnp.int32(1))[3]
  assert last_layer(grads) > 0 and first_conv(grads) > 0


@pytest.mark.slow
def test_pretrain_ema_resume_and_finetune(tmp_path, phantom_data_dir):
  """One end-to-end run checks the teacher EMA, the centre and resume.

  8 devices for 2 steps, then a copy of it killed after step 1 that resumes
  on the same mesh, so the same program must give the same bits. (1 vs 8
  devices: tests/train/devices_test.py; resuming on another device count:
  tests/methods/byol_test.py.)
  """
  config = smoke_config("pretrain_dino", phantom_data_dir, checkpoint_every=1,
                        keep_checkpoints=5, async_checkpoints=False)
  full = tmp_path / "full"
  last = pretrain.train_and_evaluate(config, str(full))
  for key in ("loss", "embedding_std", "teacher_entropy", "center_norm"):
    assert np.isfinite(last[key])
  assert last["teacher_temp"] == pytest.approx(0.07)  # after the warm-up

  # The teacher after step 2 is the EMA, at step 1's momentum, of the
  # teacher after step 1 and the student after step 2.
  before, after = _saved(full, 1), _saved(full, 2)
  assert sorted(after["aux"]) == ["center", "teacher_params",
                                  "teacher_stats"]
  momentum = float(dino.DINO(config).momentum(1))
  assert momentum == pytest.approx(1 - 0.004 / 2)  # halfway through 2 steps
  want = jax.tree.map(lambda old, student: momentum * old +
                      (1 - momentum) * student,
                      before["aux"]["teacher_params"], after["params"])
  assert_trees_close(after["aux"]["teacher_params"], want, 1e-5, 1e-7)
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), before, after)
  assert any(jax.tree.leaves(moved["params"]))
  assert moved["aux"]["center"]
  assert all(jax.tree.leaves(moved["aux"]["teacher_stats"]))

  # A run killed after step 1 resumes from it: step 2 must be the
  # uninterrupted run's, bit for bit, which needs teacher and centre
  # restored.
  killed = tmp_path / "killed"
  shutil.copytree(full, killed)
  shutil.rmtree(killed / "checkpoints" / "2")
  (killed / "metrics.jsonl").unlink()
  resumed = pretrain.train_and_evaluate(config, str(killed))
  assert resumed["loss"] == last["loss"]
  assert_trees_equal(saved_state(killed, 2), saved_state(full, 2))

  finetune_from(full, phantom_data_dir, tmp_path / "ft")
