"""Tests for 3D volume reading, volume slice records and the volume pipeline.

Volumes are made here: synthetic arrays written as .nii.gz with nibabel, and
DICOM series written slice by slice with pydicom (positions deliberately out
of file-name and InstanceNumber order), so every expected value is known.
"""
import pathlib
import subprocess
import sys

import nibabel as nib
import numpy as np
from pydicom import uid as dicom_uid
import pytest

from conftest import write_dicom_slice
from medclr.data import readers
from medclr.data import sources
from medclr.data import volume_builder
from medclr.data import volume_pipeline
from medclr.data import volumes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _ras_volume(shape=(6, 5, 4), seed=0):
  """Even integers, so DICOM slope 2 / intercept -100 round-trips exactly."""
  rng = np.random.default_rng(seed)
  return (2 * rng.integers(0, 500, size=shape)).astype(np.float32)


def _write_dicom_series(folder, volume, *, series_uids=None, geometry=True,
                        spacing=(0.5, 0.8, 2.0), slope=2.0, intercept=-100.0):
  """Writes a RAS (x, y, z) volume as an axial CT series, one file a slice.

  Axial orientation (IOP 1,0,0,0,1,0): row r runs along +y LPS (posterior),
  column c along +x LPS (left), so pixel[r, c] = volume[X-1-c, Y-1-r, k].
  Files are named and InstanceNumbers given in REVERSE slice order, so only
  ImagePositionPatient orders them correctly.
  """
  folder.mkdir(parents=True)
  x_size, _, z_size = volume.shape
  series_uids = series_uids or [dicom_uid.generate_uid()] * z_size
  for k in range(z_size):
    pixels = volume[::-1, ::-1, k].T
    stored = np.round((pixels - intercept) / slope).astype(np.uint16)
    geometry_tags = {}
    if geometry:
      geometry_tags = {"orientation": [1, 0, 0, 0, 1, 0],
                       "position": [0.0, 0.0, 10.0 + k * spacing[2]]}
    write_dicom_slice(folder / f"IM{z_size - k:03d}.dcm", stored,
                      series_uids[k],
                      instance_number=z_size - k if geometry else k + 1,
                      pixel_spacing=(spacing[1], spacing[0]), slope=slope,
                      intercept=intercept, **geometry_tags)
  del x_size


# ---------------------------------------------------------------------------
# Positions and partitions.


def test_slice_position_spans_zero_to_one():
  assert [volumes.slice_position(k, 5) for k in range(5)] == [
      0.0, 0.25, 0.5, 0.75, 1.0]
  assert volumes.slice_position(0, 1) == 0.0
  with pytest.raises(ValueError, match="not in"):
    volumes.slice_position(5, 5)


def test_partition_of_splits_volume_into_equal_parts():
  # 10 slices in 4 parts: [0, 2.5) [2.5, 5) [5, 7.5) [7.5, 10).
  np.testing.assert_array_equal(
      volumes.partition_of(np.arange(10), 10, 4),
      [0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
  np.testing.assert_array_equal(volumes.partition_of(np.arange(4), 4, 4),
                                [0, 1, 2, 3])


def test_normalize_percentile_and_minmax():
  volume = np.arange(101, dtype=np.float32).reshape(1, 1, 101)
  np.testing.assert_allclose(volumes.normalize(volume, "minmax").ravel(),
                             np.arange(101) / 100, atol=1e-6)
  clipped = volumes.normalize(volume, "percentile", (10, 90)).ravel()
  assert clipped[10] == 0 and clipped[90] == 1
  assert clipped[5] == 0 and clipped[95] == 1  # outliers clipped
  assert clipped[50] == pytest.approx(0.5)
  assert not volumes.normalize(np.full((2, 2, 2), 7.0)).any()


# ---------------------------------------------------------------------------
# NIfTI.


def test_nifti_folder_becomes_slices_with_ids_and_positions(tmp_path):
  vols = volumes.synthetic_volumes(num_volumes=2, num_slices=6, size=16)
  volumes.write_nifti(tmp_path, vols[:1], prefix="b")
  volumes.write_nifti(tmp_path, vols[1:], prefix="a")
  slices = volumes.read_volume_folder(tmp_path, volumes.VolumeOptions(size=8))
  assert len(slices) == 12
  # Volume ids follow sorted names: a_000 (= vols[1]) is volume 0.
  assert [s["volume"] for s in slices[:6]] == ["a_000"] * 6
  assert {s["volume_id"] for s in slices[6:]} == {1}
  assert [s["position"] for s in slices[:6]] == pytest.approx(
      [0, 0.2, 0.4, 0.6, 0.8, 1.0])
  assert slices[3]["stem"] == "a_000_0003"
  assert slices[3]["image"].shape == (8, 8, 1)
  assert slices[3]["image"].dtype == np.uint8
  # The image is the normalised, display-rotated axial slice.
  expected = np.rot90(volumes.normalize(vols[1])[:, :, 3])
  native = volumes.read_volume_folder(tmp_path)[3]["image"][..., 0]
  np.testing.assert_array_equal(native, np.round(expected * 255))


def test_reorientation_makes_flipped_files_identical(tmp_path):
  volume = _ras_volume()
  affine = np.diag([1.0, 1.0, 2.0, 1.0])
  nib.save(nib.Nifti1Image(volume, affine), str(tmp_path / "ras.nii.gz"))
  # Same anatomy stored with reversed x and z voxel order (LAI-like).
  flipped_affine = affine.copy()
  flipped_affine[0, 0], flipped_affine[2, 2] = -1.0, -2.0
  flipped_affine[0, 3] = volume.shape[0] - 1
  flipped_affine[2, 3] = 2.0 * (volume.shape[2] - 1)
  nib.save(nib.Nifti1Image(volume[::-1, :, ::-1].copy(), flipped_affine),
           str(tmp_path / "flipped.nii"))
  np.testing.assert_array_equal(volumes.load_volume(tmp_path / "ras.nii.gz"),
                                volume)
  np.testing.assert_array_equal(volumes.load_volume(tmp_path / "flipped.nii"),
                                volume)


def test_trailing_singleton_fourth_axis_is_dropped(tmp_path):
  volume = _ras_volume()
  nib.save(nib.Nifti1Image(volume[..., None], np.eye(4)),
           str(tmp_path / "t.nii.gz"))
  np.testing.assert_array_equal(volumes.load_volume(tmp_path / "t.nii.gz"),
                                volume)


def test_axis_choice_slices_along_that_axis():
  volume = _ras_volume(shape=(6, 5, 4))
  for axis, count in (("sagittal", 6), ("coronal", 5), ("axial", 4)):
    slices = volumes.volume_slices(volume, "v", 0,
                                   volumes.VolumeOptions(axis=axis))
    assert len(slices) == count
    assert slices[-1]["num_slices"] == count


def test_resize_pads_to_square_before_resizing():
  image = np.ones((4, 8), np.float32)
  resized = volumes.resize_slice(image, 8)
  assert resized.shape == (8, 8)
  # Rows 0-1 and 6-7 are padding, the middle keeps the image.
  assert resized[0].max() < 0.5 and resized[4].min() > 0.5


def test_nifti_errors_name_the_file(tmp_path):
  bad = tmp_path / "broken.nii.gz"
  bad.write_bytes(b"not a nifti file at all")
  with pytest.raises(readers.DataError, match="broken.nii.gz"):
    volumes.load_volume(bad)
  flat = tmp_path / "flat.nii"
  nib.save(nib.Nifti1Image(np.zeros((4, 4), np.float32), np.eye(4)), str(flat))
  with pytest.raises(readers.DataError, match=r"flat.nii .*expected a 3D"):
    volumes.load_volume(flat)
  series = tmp_path / "series.nii"
  nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)),
           str(series))
  with pytest.raises(readers.DataError, match=r"series.nii .*4D"):
    volumes.load_volume(series)
  with pytest.raises(readers.DataError, match="1 slice"):
    volumes.volume_slices(np.zeros((4, 4, 1)), "thin", 0)


def test_find_volumes_errors(tmp_path):
  with pytest.raises(readers.DataError, match="no volumes in"):
    volumes.find_volumes(tmp_path)
  with pytest.raises(readers.DataError, match="not a directory"):
    volumes.find_volumes(tmp_path / "missing")
  volumes.write_nifti(tmp_path, [_ras_volume()], prefix="x")
  nib.save(nib.Nifti1Image(_ras_volume(), np.eye(4)),
           str(tmp_path / "x_000.nii"))
  with pytest.raises(readers.DataError, match="x_000"):
    volumes.find_volumes(tmp_path)


# ---------------------------------------------------------------------------
# DICOM.


def test_dicom_series_matches_the_volume_it_was_written_from(tmp_path):
  volume = _ras_volume(shape=(6, 5, 4))
  _write_dicom_series(tmp_path / "ct1", volume)
  np.testing.assert_array_equal(volumes.load_volume(tmp_path / "ct1"), volume)
  slices = volumes.read_volume_folder(tmp_path)
  assert [s["slice_index"] for s in slices] == [0, 1, 2, 3]
  assert {s["volume"] for s in slices} == {"ct1"}
  expected = volumes.volume_slices(volume, "ct1", 0)
  for got, want in zip(slices, expected):
    np.testing.assert_array_equal(got["image"], want["image"])


def test_dicom_without_geometry_is_ordered_by_instance_number(tmp_path):
  volume = _ras_volume(shape=(4, 4, 3))
  _write_dicom_series(tmp_path / "s", volume, geometry=False)
  loaded = volumes.load_volume(tmp_path / "s")
  # No orientation: the (rows, cols, InstanceNumber) stack as written.
  want = np.stack([volume[::-1, ::-1, k].T for k in range(3)], axis=-1)
  np.testing.assert_array_equal(loaded, want)


def test_dicom_errors(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(readers.DataError, match="holds no .dcm"):
    volumes.read_dicom_series(tmp_path / "empty")
  _write_dicom_series(tmp_path / "mixed", _ras_volume(shape=(4, 4, 3)),
                      series_uids=["1.2.3", "1.2.3", "1.2.4"])
  with pytest.raises(readers.DataError, match="mixes 2 series"):
    volumes.read_dicom_series(tmp_path / "mixed")
  _write_dicom_series(tmp_path / "broken", _ras_volume(shape=(4, 4, 2)))
  (tmp_path / "broken" / "IM999.dcm").write_bytes(b"garbage")
  with pytest.raises(readers.DataError, match="IM999.dcm"):
    volumes.read_dicom_series(tmp_path / "broken")


# ---------------------------------------------------------------------------
# Records.


def test_records_round_trip_and_slice_table(tmp_path):
  manual = tmp_path / "raw"
  volumes.write_nifti(manual, volumes.synthetic_volumes(2, 5, 16), "v")
  _write_dicom_series(manual / "ct", _ras_volume(shape=(8, 8, 3)))
  data_dir = tmp_path / "data"
  volume_builder.prepare_volumes(manual, data_dir, "vols",
                                 volumes.VolumeOptions(size=8), quiet=True)
  assert sources.available_datasets(data_dir) == ["vols"]
  source = volume_builder.open_volume_split(data_dir, "vols", "train")
  assert len(source) == 13
  table = volume_builder.slice_table(data_dir, "vols", "train")
  by_stem = {}
  for index in range(len(source)):
    record = source[index]
    assert list(table[index]) == [record["volume_id"], record["slice_index"],
                                  record["num_slices"]]
    by_stem[sources.stem_of(record)] = record
  record = by_stem["ct_0002"]
  assert record["volume_id"] == 0 and record["num_slices"] == 3
  assert record["position"] == 1.0 and record["image"].shape == (8, 8, 1)
  # Without its table file the set is scanned instead.
  volume_builder.table_path(data_dir, "vols", "train").unlink()
  np.testing.assert_array_equal(
      volume_builder.slice_table(data_dir, "vols", "train"), table)


def test_a_2d_set_is_not_a_volume_set(phantom_data_dir):
  with pytest.raises(readers.DataError, match="launch.prepare_volumes"):
    volume_builder.open_volume_split(phantom_data_dir, "phantom", "train")


def test_launcher_prepares_synthetic_volumes(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "launch.prepare_volumes", "--name=synth",
       "--synthetic", f"--data_dir={tmp_path}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  table = volume_builder.slice_table(tmp_path, "synth", "train")
  assert len(np.unique(table[:, 0])) == volume_builder.SYNTHETIC_DEFAULTS[
      "num_volumes"]
  missing = subprocess.run(
      [sys.executable, "-m", "launch.prepare_volumes", "--name=x",
       f"--manual_dir={tmp_path / 'nothing'}", f"--data_dir={tmp_path}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert missing.returncode != 0 and "not a directory" in missing.stderr


# ---------------------------------------------------------------------------
# Pipeline.


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("volume_data")
  volume_builder.prepare_synthetic(data_dir, num_volumes=5, num_slices=9,
                                   size=24)
  volume_builder.prepare_synthetic(data_dir, "more", num_volumes=2,
                                   num_slices=4, size=24, seed=1)
  return data_dir


def _dataset(data_dir, sampling, sources_str="synthetic_volumes:train",
             local_batch=8, partitions=4):
  return volume_pipeline.volume_pretrain_dataset(
      data_dir, sources_str, image_size=8, in_channels=1, area=(0.5, 0.5),
      aspect=(1.0, 1.0), partitions=partitions, sampling=sampling,
      local_batch=local_batch, seed=3)


def test_random_sampling_labels_match_positions(synthetic_dir):
  batch = next(iter(_dataset(synthetic_dir, "random")))
  assert batch["view1"].shape == (8, 8, 8, 1)
  # 9 slices: position k/8; partition floor(4k/9).
  index = np.round(batch["position"] * 8).astype(int)
  np.testing.assert_allclose(batch["position"], index / 8, atol=1e-6)
  np.testing.assert_array_equal(batch["partition"], (4 * index) // 9)
  assert batch["volume_id"].dtype == np.int32


def test_partition_sampling_takes_one_slice_per_part(synthetic_dir):
  iterator = iter(_dataset(synthetic_dir, "partition"))
  for _ in range(3):
    batch = next(iterator)
    groups = batch["volume_id"].reshape(2, 4)
    assert (groups == groups[:, :1]).all()  # one volume per group of 4
    np.testing.assert_array_equal(batch["partition"].reshape(2, 4),
                                  [[0, 1, 2, 3]] * 2)
    assert groups[0, 0] != groups[1, 0]


def test_pipeline_resumes_from_iterator_state(synthetic_dir):
  for sampling in volume_pipeline.SAMPLINGS:
    iterator = iter(_dataset(synthetic_dir, sampling))
    next(iterator)
    state = iterator.get_state()
    want = next(iterator)
    resumed = iter(_dataset(synthetic_dir, sampling))
    resumed.set_state(state)
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_volume_ids_are_unique_across_sources(synthetic_dir):
  dataset = _dataset(synthetic_dir, "partition",
                     "synthetic_volumes:train,more:train", local_batch=28)
  ids = next(iter(dataset))["volume_id"].reshape(7, 4)[:, 0]
  assert sorted(ids) == list(range(7))


def test_pipeline_errors(synthetic_dir):
  with pytest.raises(readers.DataError, match="multiple of"):
    _dataset(synthetic_dir, "partition", local_batch=6)
  with pytest.raises(readers.DataError, match="fewer than"):
    _dataset(synthetic_dir, "partition", "more:train", partitions=8,
             local_batch=8)
  with pytest.raises(readers.DataError, match="sampling"):
    _dataset(synthetic_dir, "sequential")


def _write_stack(folder, sizes):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folder.mkdir()
  for index, size in sizes.items():
    # Each section's brightness is its index, so the order is visible.
    Image.fromarray(np.full(size, index * 10, np.uint8)).save(
        folder / f"{index}.png")


def test_folder_of_sections_is_one_volume_in_natural_order(tmp_path):
  stack = tmp_path / "stack"
  _write_stack(stack, {i: (8, 6) for i in (0, 1, 2, 10, 11)})
  assert volumes.find_volumes(stack) == [stack]
  volume = volumes.load_volume(stack)
  assert volume.shape == (8, 6, 5)
  # 0, 1, 2, 10, 11: natural order, not the string order 0, 1, 10, 11, 2.
  np.testing.assert_array_equal(volume[0, 0], [0, 10, 20, 100, 110])
  slices = volumes.read_volume_folder(
      stack, volumes.VolumeOptions(axis="axial", size=None))
  positions = [s["position"] for s in slices]
  assert positions == sorted(positions) and len(slices) == 5


def test_sections_of_different_sizes_are_refused_by_folder(tmp_path):
  stack = tmp_path / "stack"
  _write_stack(stack, {0: (8, 6), 1: (8, 6), 2: (6, 8)})
  with pytest.raises(readers.DataError, match="share one size"):
    volumes.load_volume(stack)
