"""ContrastiveCrop: box localisation, Beta centre placement, resume."""
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import saved_subtrees, smoke_config
from medclr.data import contrastive_crop
from medclr.data import crops
from medclr.train import pretrain


def test_box_from_features_spans_the_hot_region():
  features = np.zeros((2, 8, 8, 4), np.float32)
  features[0, 2:4, 5:7, :] = 1.0  # hot block: rows 2-3, cols 5-6 of 8
  features[1] = 1.0  # flat map: no row above threshold after min-max
  boxes = np.asarray(contrastive_crop.boxes_from_features(
      jnp.asarray(features), 64, 0.5))
  h0, w0, h1, w1 = boxes[0]
  # Bilinear upsampling blurs the block edges by up to one feature cell.
  assert 1 / 8 <= h0 <= 2 / 8 + 1 / 64 and 4 / 8 - 1 / 64 <= h1 <= 5 / 8
  assert 4 / 8 <= w0 <= 5 / 8 + 1 / 64 and 7 / 8 - 1 / 64 <= w1 <= 1.0
  np.testing.assert_allclose(boxes[1], contrastive_crop.FULL_BOX)


def test_beta_place_puts_crop_centres_inside_the_box():
  rng = np.random.default_rng(0)
  box = (0.5, 0.1, 0.9, 0.4)
  place = contrastive_crop.beta_place(box, alpha=0.6)
  for _ in range(300):
    top, left, h, w = crops.sample_crop_window(200, 100, rng, (0.01, 0.02),
                                               (3 / 4, 4 / 3), place=place)
    cy, cx = top + h // 2, left + w // 2
    assert 200 * box[0] - 1 <= cy <= 200 * box[2] + 1
    assert 100 * box[1] - 1 <= cx <= 100 * box[3] + 1


def test_alpha_below_one_pushes_centres_to_the_box_border():
  rng = np.random.default_rng(1)
  box = (0.0, 0.0, 1.0, 1.0)
  def spread(alpha):
    place = contrastive_crop.beta_place(box, alpha)
    tops = [place(rng, 1000, 1000, 10, 10)[0] for _ in range(2000)]
    return np.mean(np.abs(np.asarray(tops) - 495) > 400)
  assert spread(0.1) > spread(1.0) + 0.3


@pytest.mark.slow
def test_ccrop_run_logs_box_area_and_resumes_exactly(tmp_path,
                                                     phantom_data_dir):
  config = smoke_config("pretrain_simclr", phantom_data_dir, num_steps=4,
                        checkpoint_every=1, keep_checkpoints=10,
                        async_checkpoints=False,
                        **{"contrastive_crop.mode": "ccrop",
                           "contrastive_crop.warmup_steps": 1,
                           "contrastive_crop.loc_interval": 2,
                           "contrastive_crop.box_thresh": 0.5})
  full = tmp_path / "full"
  pretrain.train_and_evaluate(config, str(full))
  rows = [json.loads(l) for l in open(full / "metrics.jsonl")]
  areas = [r["ccrop_mean_box_area"] for r in rows
           if "ccrop_mean_box_area" in r]
  assert len(areas) == 2 and all(0 < a <= 1 for a in areas)

  killed = tmp_path / "killed"
  shutil.copytree(full, killed)
  shutil.rmtree(killed / "checkpoints" / "4")
  shutil.rmtree(killed / "checkpoints" / "3")
  pretrain.train_and_evaluate(config, str(killed))

  def params(workdir):
    return jax.tree.leaves(saved_subtrees(workdir, 4)["params"])

  for a, b in zip(params(full), params(killed)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
