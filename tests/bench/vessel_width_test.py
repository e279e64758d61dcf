"""benchmarks/vessel_width.py: thin vessels and the threshold diagnosis."""
import numpy as np

from benchmarks import vessel_width


def test_thin_part_keeps_lines_under_3_px_across():
  vessels = np.zeros((20, 20), bool)
  vessels[2, 2:18] = True      # 1 px across: thin
  vessels[8:13, 2:18] = True   # 5 px across: thick
  thin = vessel_width.thin_part(vessels)
  assert thin[2, 2:18].all()
  assert not thin[8:13].any()


def test_pooled_dice_finds_the_threshold_of_a_shifted_model():
  # Vessel pixels at level 40, background at 10: at 0.5 nothing is found,
  # while any threshold in (10, 40] separates them perfectly.
  levels = np.zeros((2, 256))
  levels[0, 40], levels[1, 10] = 100, 900
  dice = vessel_width.pooled_dice(levels)
  assert dice["dice_at_0.5"] == 0.0
  assert dice["best_dice"] == 1.0
  assert 10 / 255 < dice["best_threshold"] <= 40 / 255
