"""Tests for medclr.data.multicrop: DINO's 2 global + N local host crops."""
import numpy as np
import pytest

from medclr.data import multicrop


def _dataset(data_dir, **overrides):
  kwargs = dict(global_size=16, local_size=8, num_local=3, in_channels=3,
                global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
                aspect=(3 / 4, 4 / 3), local_batch=4, seed=0)
  kwargs.update(overrides)
  return multicrop.multicrop_dataset(data_dir, "phantom:train", **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_batch_has_global_and_local_crops(phantom_data_dir):
  batch = next(iter(_dataset(phantom_data_dir)))
  assert sorted(batch) == ["global_0", "global_1", "local_0", "local_1",
                           "local_2"]
  for key, crop in batch.items():
    side = 16 if key.startswith("global") else 8
    assert crop.shape == (4, side, side, 3) and crop.dtype == np.float32
    assert 0.0 <= crop.min() and crop.max() <= 1.0
  # Independent windows: no two crops of an image are the same.
  assert not np.array_equal(batch["global_0"], batch["global_1"])
  assert not np.array_equal(batch["local_0"], batch["local_1"])


def test_no_local_crops_and_gray_conversion(phantom_data_dir):
  batch = next(iter(_dataset(phantom_data_dir, num_local=0, in_channels=1)))
  assert sorted(batch) == ["global_0", "global_1"]
  assert batch["global_0"].shape == (4, 16, 16, 1)


def test_each_crop_kind_uses_its_own_scale():
  """On a horizontal ramp, a crop's value range is its relative width."""
  width = 200
  ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (width, 1))
  image = np.repeat(ramp[..., None], 3, axis=-1)
  crop = multicrop.MultiCrop(
      global_size=32, local_size=16, num_local=4, in_channels=1,
      global_scale=(1.0, 1.0), local_scale=(0.25, 0.25), aspect=(1.0, 1.0))
  out = crop.random_map({"image": image}, np.random.default_rng(0))
  for key in multicrop.GLOBAL_KEYS:
    spread = out[key].max() - out[key].min()
    assert spread > 0.9  # the whole image
  for key in multicrop.local_keys(4):
    spread = out[key].max() - out[key].min()
    assert 0.4 < spread < 0.55  # half the side: a quarter of the area


def test_same_seed_same_batches_other_seed_differs(phantom_data_dir):
  first = _take(iter(_dataset(phantom_data_dir)), 2)
  again = _take(iter(_dataset(phantom_data_dir)), 2)
  other = next(iter(_dataset(phantom_data_dir, seed=1)))
  for a, b in zip(first, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(first[0]["local_0"], other["local_0"])


def test_iterator_state_resumes_exactly(phantom_data_dir):
  iterator = iter(_dataset(phantom_data_dir))
  next(iterator)
  state = iterator.get_state()
  want = _take(iterator, 2)
  resumed = iter(_dataset(phantom_data_dir))
  resumed.set_state(state)
  for a, b in zip(want, _take(resumed, 2)):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_processes_split_the_global_batch(phantom_data_dir):
  """2 processes x 2 examples == 1 process x 4, batch for batch."""
  single = _take(iter(_dataset(phantom_data_dir)), 2)
  parts = [_take(iter(_dataset(phantom_data_dir, local_batch=2,
                               process_index=p, process_count=2)), 2)
           for p in (0, 1)]
  for b, want in enumerate(single):
    for key in want:
      got = np.concatenate([parts[0][b][key], parts[1][b][key]])
      np.testing.assert_array_equal(want[key], got)


@pytest.mark.parametrize("overrides,message", [
    (dict(global_scale=(0.5, 0.2)), "global_scale"),
    (dict(local_scale=(0.0, 0.4)), "local_scale"),
    (dict(num_local=-1), "num_local"),
    (dict(local_size=0), "local_size"),
])
def test_bad_arguments_are_named(phantom_data_dir, overrides, message):
  with pytest.raises(ValueError, match=message):
    _dataset(phantom_data_dir, **overrides)
