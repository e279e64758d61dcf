"""End-to-end smoke runs really train: the first update moves parameters."""
from flax import nnx
import jax
import numpy as np

from conftest import assert_trees_close, saved_state, saved_subtrees
from conftest import smoke_config
from medclr import methods
from medclr import models
from medclr.data import sources
from medclr.evaluate import evaluate
from medclr.train import finetune


def _changed_leaves(before, after):
  flat_before = jax.tree_util.tree_leaves_with_path(before)
  flat_after = dict(jax.tree_util.tree_leaves_with_path(after))
  return {jax.tree_util.keystr(path): not np.allclose(leaf, flat_after[path])
          for path, leaf in flat_before}


def test_first_pretraining_update_moves_every_encoder_kernel(
    pretrained_dir, phantom_data_dir):
  config = smoke_config("pretrain_simclr", phantom_data_dir)
  model = methods.get_method(config).make_model(nnx.Rngs(config.seed))
  _, init_params, _ = models.split_model(model)
  after_one = saved_subtrees(pretrained_dir, 1)["params"]
  changed = _changed_leaves(init_params["encoder"], after_one["encoder"])
  kernels = {k: v for k, v in changed.items() if "kernel" in k}
  assert kernels and all(kernels.values()), kernels


def test_first_finetuning_update_moves_the_decoder(finetuned_dir,
                                                   phantom_data_dir):
  config = smoke_config("finetune_unet", phantom_data_dir)
  model = models.make_unet(config.model, nnx.Rngs(config.seed))
  _, init_params, _ = models.split_model(model)
  after_one = saved_subtrees(finetuned_dir, 1)["params"]
  changed = _changed_leaves(init_params["decoder"], after_one["decoder"])
  kernels = {k: v for k, v in changed.items() if "kernel" in k}
  assert kernels and all(kernels.values()), kernels


def test_weight_average_follows_its_update_rule_and_is_what_evaluation_uses(
    tmp_path, phantom_data_dir):
  decay = 0.5
  config = smoke_config("finetune_unet", phantom_data_dir, num_steps=3,
                        keep_checkpoints=3, async_checkpoints=False,
                        **{"optim.ema_decay": decay})
  finetune.train_and_evaluate(config, str(tmp_path))
  saved = {k: saved_state(str(tmp_path), k)[0] for k in (1, 2, 3)}
  for k in (2, 3):
    # After update k (0-based k - 1): m old average + (1 - m) new weights.
    m = min(decay, k / (9.0 + k))
    want = jax.tree.map(lambda old, new: m * old + (1 - m) * new,
                        saved[k - 1]["aux"]["ema_params"],
                        saved[k]["params"])
    assert_trees_close(saved[k]["aux"]["ema_params"], want, 1e-6, 1e-7)
  # Teeth: the average lags the weights, so evaluating either differs.
  assert any(jax.tree.leaves(_changed_leaves(
      saved[3]["params"], saved[3]["aux"]["ema_params"])))

  record = sources.open_split(phantom_data_dir, "phantom", "test")[0]
  image = np.asarray(record["image"]) / 255.0
  predictor = evaluate.load_for_inference(str(tmp_path))
  graphdef = nnx.graphdef(models.make_unet(config.model, nnx.Rngs(0)))
  predict = models.make_predict_fn(graphdef)
  norm_image = predictor.preprocess.model_input(image, record["fov"])
  window = norm_image[None, :config.data.crop_size, :config.data.crop_size]
  got = np.asarray(predictor._predict(window))  # pylint: disable=protected-access
  for params, matches in ((saved[3]["aux"]["ema_params"], True),
                          (saved[3]["params"], False)):
    want = np.asarray(predict(params, saved[3]["batch_stats"], window))
    assert np.allclose(got, want, atol=1e-5) == matches


def test_frozen_encoder_waits_its_steps_while_the_decoder_trains(
    tmp_path, pretrained_dir, phantom_data_dir):
  config = smoke_config(
      "finetune_unet", phantom_data_dir, num_steps=3, keep_checkpoints=3,
      async_checkpoints=False,
      **{"init.pretrain_dir": pretrained_dir, "init.freeze": "encoder",
         "init.freeze_steps": 2})
  finetune.train_and_evaluate(config, str(tmp_path))
  pretrained = saved_subtrees(pretrained_dir, 2)["params"]["encoder"]
  saved = {k: saved_subtrees(str(tmp_path), k)["params"] for k in (1, 2, 3)}
  for k in (1, 2):
    assert_trees_close(saved[k]["encoder"], pretrained, 0, 0)
  decoder_moved = _changed_leaves(saved[1]["decoder"], saved[2]["decoder"])
  assert all(v for k, v in decoder_moved.items() if "kernel" in k)
  encoder_moved = _changed_leaves(saved[2]["encoder"], saved[3]["encoder"])
  assert all(v for k, v in encoder_moved.items() if "kernel" in k)
