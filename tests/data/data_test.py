"""Tests for the data layer: readers, phantom, TFDS records, Grain pipelines."""
import pathlib

import numpy as np
from PIL import Image
import pytest

from medclr.data import fov as fov_lib
from medclr.data import phantom
from medclr.data import pipeline
from medclr.data import prepare as prepare_lib
from medclr.data import readers
from medclr.data import sources
from medclr.data import tfds_builder

DataError = readers.DataError


def _save(path: pathlib.Path, array: np.ndarray, **kwargs) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)
  return path


def _by_stem(source) -> dict[str, dict]:
  return {sources.stem_of(source[i]): source[i] for i in range(len(source))}


# ---------------------------------------------------------------------------
# Phantom.


class TestPhantom:

  def test_shapes_and_types(self):
    examples = phantom.generate(3, 64, seed=0)
    assert len(examples) == 3
    for example in examples:
      assert example["image"].shape == (64, 64, 3)
      assert example["image"].dtype == np.uint8
      assert example["mask"].shape == example["fov"].shape == (64, 64)
      assert set(np.unique(example["mask"])) <= {0, 1}
      assert set(np.unique(example["fov"])) == {0, 1}
      assert example["has_mask"] is True
    assert len({e["stem"] for e in examples}) == 3

  def test_deterministic_given_seed(self):
    first, again = phantom.generate(2, 48, 5), phantom.generate(2, 48, 5)
    other = phantom.generate(2, 48, 6)
    for a, b in zip(first, again):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["mask"], b["mask"])
    assert not np.array_equal(first[0]["image"], other[0]["image"])
    assert first[0]["stem"] != other[0]["stem"]

  def test_vessel_fraction_and_mask_inside_fov(self):
    examples = phantom.generate(12, 128, seed=1)
    fractions = [e["mask"].mean() for e in examples]
    assert 0.05 <= np.mean(fractions) <= 0.15
    assert min(fractions) > 0.02 and max(fractions) < 0.2
    for example in examples:
      assert not (example["mask"] & (1 - example["fov"])).any()
      # Field of view is a centred disc on black.
      assert example["fov"][64, 64] == 1 and example["fov"][0, 0] == 0
      assert example["image"][example["fov"] == 0].max() == 0

  def test_vessels_are_darker_than_background(self):
    example = phantom.generate(1, 128, seed=2)[0]
    red = example["image"][..., 0].astype(float)
    vessel = red[example["mask"] == 1].mean()
    background = red[(example["mask"] == 0) & (example["fov"] == 1)].mean()
    assert vessel < 0.8 * background


# ---------------------------------------------------------------------------
# ISBI 2012 with held-out sections.


def _isbi_layout(root, stems):
  """train/{image,label}/<stem>.png; section k is filled with k, its label
  marks membrane (0) on its first k columns."""
  for k, stem in enumerate(stems):
    _save(root / "train/image" / f"{stem}.png", np.full((6, 8), k, np.uint8))
    label = np.full((6, 8), 255, np.uint8)
    label[:, :k] = 0
    _save(root / "train/label" / f"{stem}.png", label)
    _save(root / "test/image" / f"{stem}.png", np.zeros((6, 8), np.uint8))
  return root


def test_isbi2012_holds_out_the_last_sections_in_natural_order(tmp_path):
  # Natural order 0, 1, 2, 10, 11; a plain string sort would put '2' last.
  root = _isbi_layout(tmp_path / "em", ["0", "1", "2", "10", "11"])
  train = readers.read_isbi2012(root, "train", test_slices=2)
  test = readers.read_isbi2012(root, "test", test_slices=2)
  assert [e["image"][0, 0, 0] for e in train] == [0, 1, 2]
  assert [e["image"][0, 0, 0] for e in test] == [3, 4]
  # Membrane (label 0) is class 1.
  assert [int(e["mask"].sum()) for e in test] == [3 * 6, 4 * 6]
  assert len(readers.read_isbi2012(root, "train")) == 5  # default: all
  with pytest.raises(readers.DataError, match="needs test_slices > 0"):
    readers.read_isbi2012(root, "test")
  with pytest.raises(readers.DataError, match=r"test_slices=5: .* has 5 "
                     r"labelled sections; expected 1 to 4"):
    readers.read_isbi2012(root, "train", test_slices=5)


def test_prepare_writes_isbi_test_split_and_refuses_it_elsewhere(tmp_path):
  root = _isbi_layout(tmp_path / "em", ["0", "1", "2", "10", "11"])
  data_dir = tmp_path / "data"
  prepare_lib.prepare("isbi2012", root, data_dir, name="em", test_slices=2)
  assert [len(sources.open_split(data_dir, "em", split))
          for split in ("train", "test", "unlabeled")] == [3, 2, 5]
  with pytest.raises(readers.DataError, match="--test_slices=2 only applies "
                     "to --dataset=isbi2012"):
    prepare_lib.prepare("hrf", root, data_dir, name="h", test_slices=2)
  assert not (data_dir / "medclr2d" / "h").exists()


# ---------------------------------------------------------------------------
# Folder reader.


@pytest.fixture
def folder_set(tmp_path):
  """A small <root>/train/{images,masks}/ set in three formats."""
  rng = np.random.default_rng(0)
  root = tmp_path / "myset"
  gray = rng.integers(0, 256, (12, 10), np.uint8)
  # Smooth colours, so JPEG (lossy, chroma-subsampled) keeps them closely.
  yy, xx = np.mgrid[0:8, 0:9]
  rgb = np.stack([yy * 30, xx * 28, np.full_like(yy, 90)], -1).astype(np.uint8)
  classes = rng.integers(0, 4, (6, 7), np.uint8)
  _save(root / "train/images/a.png", gray)
  _save(root / "train/images/b.JPG", rgb, quality=95)
  _save(root / "train/images/c.tif", rng.integers(0, 256, (6, 7, 3), np.uint8))
  _save(root / "train/masks/a.png", (gray > 128).astype(np.uint8) * 255)
  _save(root / "train/masks/b.png", (rgb[..., 0] > 100).astype(np.uint8))
  _save(root / "train/masks/c.png", classes)
  return root, {"a": gray, "b": rgb, "classes": classes}


class TestFolderReader:

  def test_reads_images_and_masks(self, folder_set):
    root, arrays = folder_set
    examples = {e["stem"]: e for e in readers.read_folder_split(root, "train")}
    assert sorted(examples) == ["a", "b", "c"]
    a, b, c = examples["a"], examples["b"], examples["c"]
    np.testing.assert_array_equal(a["image"][..., 0], arrays["a"])
    assert a["image"].shape == (12, 10, 1)
    np.testing.assert_array_equal(a["mask"], arrays["a"] > 128)  # 0/255 -> 0/1
    assert b["image"].shape == (8, 9, 3)  # JPEG: lossy, compare loosely.
    assert np.abs(b["image"].astype(int) - arrays["b"]).mean() < 8
    np.testing.assert_array_equal(b["mask"], arrays["b"][..., 0] > 100)
    np.testing.assert_array_equal(c["mask"], arrays["classes"])
    for example in examples.values():
      assert example["has_mask"] and example["mask"].dtype == np.uint8
      np.testing.assert_array_equal(example["fov"], 1)

  def test_fov_folder_and_no_masks(self, tmp_path):
    root = tmp_path / "set"
    _save(root / "unl/images/x.png", np.zeros((5, 6, 3), np.uint8))
    fov = np.zeros((5, 6), np.uint8)
    fov[1:4, 2:5] = 255
    _save(root / "unl/fov/x.gif", fov)
    (example,) = readers.read_folder_split(root, "unl")
    assert example["has_mask"] is False
    np.testing.assert_array_equal(example["mask"], 0)
    np.testing.assert_array_equal(example["fov"], fov // 255)

  def test_sixteen_bit_and_palette_images(self, tmp_path):
    root = tmp_path / "set"
    deep = np.array([[1000, 2000], [3000, 4000]], np.uint16)
    _save(root / "s/images/deep.png", deep)
    palette = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    (root / "s/images").mkdir(parents=True, exist_ok=True)
    palette.save(root / "s/images/pal.gif")
    examples = {e["stem"]: e for e in readers.read_folder_split(root, "s")}
    # Values below 4096: 12-bit data, scaled by 255 / 4095 (readers docstring).
    np.testing.assert_array_equal(examples["deep"]["image"][..., 0],
                                  [[62, 125], [187, 249]])
    np.testing.assert_array_equal(examples["pal"]["image"][0, 1], [255, 0, 0])

  def test_long_side_resizes_image_and_labels(self, tmp_path):
    root = tmp_path / "set"
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, 20:] = 200
    mask = np.zeros((20, 40), np.uint8)
    mask[:, 20:] = 2
    _save(root / "train/images/w.png", image)
    _save(root / "train/masks/w.png", mask)
    (example,) = readers.read_folder_split(root, "train", long_side=10)
    assert example["image"].shape == (5, 10, 3)
    assert example["mask"].shape == example["fov"].shape == (5, 10)
    # Nearest neighbour: class indices stay class indices.
    np.testing.assert_array_equal(example["mask"][:, :5], 0)
    np.testing.assert_array_equal(example["mask"][:, 5:], 2)

  def test_missing_dir(self, folder_set):
    root, _ = folder_set
    with pytest.raises(DataError, match=r"split 'val'.*myset/val"):
      readers.read_folder_split(root, "val")
    (root / "empty/images").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no image files in .*empty/images"):
      readers.read_folder_split(root, "empty")

  def test_size_mismatch_names_both_files(self, folder_set):
    root, _ = folder_set
    _save(root / "train/masks/a.png", np.zeros((11, 10), np.uint8))
    with pytest.raises(DataError) as error:
      readers.read_folder_split(root, "train")
    message = str(error.value)
    assert "masks/a.png" in message and "images/a.png" in message
    assert "10x11" in message and "10x12" in message

  def test_corrupt_file_is_named(self, folder_set):
    root, _ = folder_set
    (root / "train/images/c.tif").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"images/c\.tif"):
      readers.read_folder_split(root, "train")

  def test_truncated_file_is_named(self, folder_set):
    root, _ = folder_set
    path = root / "train/images/a.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=r"cannot decode .*images/a\.png"):
      readers.read_folder_split(root, "train")

  def test_missing_mask(self, folder_set):
    root, _ = folder_set
    (root / "train/masks/b.png").unlink()
    with pytest.raises(DataError, match=r"no mask file .*: b\.JPG"):
      readers.read_folder_split(root, "train")

  def test_only_unsupported_files(self, tmp_path):
    (tmp_path / "s/images").mkdir(parents=True)
    (tmp_path / "s/images/scan.dcm").write_bytes(b"x")
    with pytest.raises(DataError, match=r"found scan\.dcm.*\.png"):
      readers.read_folder_split(tmp_path, "s")


# ---------------------------------------------------------------------------
# Preparing records and opening them.


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
  """Phantom set prepared once for this module: 10 train / 3 test, 48 px."""
  data_dir = tmp_path_factory.mktemp("records")
  prepare_lib.prepare("phantom", None, data_dir, num_train=10, num_test=3,
                      size=48, seed=3)
  return data_dir


class TestPrepareAndOpen:

  def test_records_equal_generated_examples(self, phantom_dir):
    expected = {"train": phantom.generate(10, 48, 3),
                "test": phantom.generate(3, 48, 4)}
    assert sources.available_splits(phantom_dir, "phantom") == ["test", "train"]
    for split, examples in expected.items():
      source = sources.open_split(phantom_dir, "phantom", split)
      assert len(source) == len(examples)
      assert sources.split_size(phantom_dir, "phantom", split) == len(examples)
      records = _by_stem(source)
      assert sorted(records) == sorted(e["stem"] for e in examples)
      for example in examples:
        record = records[example["stem"]]
        for key in ("image", "mask", "fov"):
          np.testing.assert_array_equal(record[key], example[key])
        assert bool(record["has_mask"]) is True

  def test_stems_follow_record_order(self, phantom_dir):
    source = sources.open_split(phantom_dir, "phantom", "test")
    stems = sources.stems(source)
    assert stems == [sources.stem_of(source[i]) for i in range(3)]
    assert sorted(stems) == [f"phantom4_{i:04d}" for i in range(3)]

  def test_existing_set_is_not_rewritten(self, tmp_path, capsys):
    path = prepare_lib.prepare("phantom", None, tmp_path, num_train=2,
                               num_test=1, size=32)
    info = path / "dataset_info.json"
    before = info.stat().st_mtime_ns, sorted(p.name for p in path.iterdir())
    capsys.readouterr()
    again = prepare_lib.prepare("phantom", None, tmp_path, num_train=5,
                                num_test=1, size=32)
    assert again == path
    assert "already prepared" in capsys.readouterr().out
    assert (info.stat().st_mtime_ns,
            sorted(p.name for p in path.iterdir())) == before
    assert sources.split_size(tmp_path, "phantom", "train") == 2
    prepare_lib.prepare("phantom", None, tmp_path, overwrite=True, num_train=5,
                        num_test=1, size=32)
    assert sources.split_size(tmp_path, "phantom", "train") == 5

  def test_folder_set_round_trip(self, folder_set, tmp_path):
    root, arrays = folder_set
    data_dir = tmp_path / "records"
    prepare_lib.prepare("folder", root, data_dir, name="my_set")
    records = _by_stem(sources.open_split(data_dir, "my_set", "train"))
    np.testing.assert_array_equal(records["a"]["image"][..., 0], arrays["a"])
    np.testing.assert_array_equal(records["c"]["mask"], arrays["classes"])

  def test_unlabeled_pool_round_trip(self, tmp_path):
    examples = phantom.generate(3, 48, seed=0)
    for example in examples:
      _save(tmp_path / "pool/images" / f"{example['stem']}.png",
            example["image"])
    data_dir = tmp_path / "records"
    prepare_lib.prepare("unlabeled", tmp_path / "pool", data_dir,
                        name="my_pool")
    assert sources.available_splits(data_dir, "my_pool") == ["train"]
    records = _by_stem(sources.open_split(data_dir, "my_pool", "train"))
    assert sorted(records) == sorted(e["stem"] for e in examples)
    for example in examples:
      record = records[example["stem"]]
      np.testing.assert_array_equal(record["image"], example["image"])
      assert not record["has_mask"]
      # The estimated FOV, not the whole frame: the phantom's dark corners
      # lie outside it.
      assert record["fov"][0, 0] == 0 and record["fov"][24, 24] == 1
    with pytest.raises(DataError, match="--name is required with "
                       "--dataset=unlabeled"):
      prepare_lib.prepare("unlabeled", tmp_path / "pool", data_dir)
    (tmp_path / "no_images").mkdir()
    with pytest.raises(DataError, match=r"no_images/images"):
      prepare_lib.prepare("unlabeled", tmp_path / "no_images", data_dir,
                          name="pool2")

  def test_bad_folder_file_writes_nothing(self, folder_set, tmp_path):
    root, _ = folder_set
    (root / "train/masks/c.png").write_bytes(b"garbage")
    data_dir = tmp_path / "records"
    with pytest.raises(DataError, match=r"masks/c\.png"):
      prepare_lib.prepare("folder", root, data_dir, name="my_set")
    assert not (data_dir / "medclr2d").exists()

  def test_write_dataset_rejects_bad_input_before_writing(self, tmp_path):
    examples = phantom.generate(2, 32, 0)
    duplicate = [examples[0], dict(examples[1], stem=examples[0]["stem"])]
    with pytest.raises(DataError, match="two examples with stem"):
      tfds_builder.write_dataset(tmp_path, "dup", {"train": duplicate})
    flat = [dict(examples[0], image=examples[0]["image"][..., 0])]
    with pytest.raises(DataError, match=r"image must be uint8 \(H, W, 1\|3\)"):
      tfds_builder.write_dataset(tmp_path, "flat", {"train": flat})
    assert not (tmp_path / "medclr2d").exists()
    tfds_builder.write_dataset(tmp_path, "ok", {"train": examples})
    with pytest.raises(DataError, match="already exists.*overwrite"):
      tfds_builder.write_dataset(tmp_path, "ok", {"train": examples})

  def test_prepare_argument_errors(self, tmp_path):
    with pytest.raises(DataError, match="--name is required"):
      prepare_lib.prepare("folder", tmp_path, tmp_path)
    with pytest.raises(DataError, match="--manual_dir is required"):
      prepare_lib.prepare("drive", None, tmp_path)
    with pytest.raises(DataError, match="--dataset='mnist' is unknown"):
      prepare_lib.prepare("mnist", None, tmp_path)
    with pytest.raises(DataError, match="name 'My-Set' is invalid"):
      prepare_lib.prepare("folder", tmp_path, tmp_path, name="My-Set")

  def test_is_prepared(self, phantom_dir, tmp_path):
    assert sources.is_prepared(phantom_dir, "phantom")
    assert not sources.is_prepared(phantom_dir, "drive")
    assert not sources.is_prepared(tmp_path / "nowhere", "phantom")
    assert sources.available_datasets(phantom_dir) == ["phantom"]

  def test_open_errors(self, phantom_dir, tmp_path):
    with pytest.raises(DataError, match="missing or empty"):
      sources.open_split(tmp_path / "nowhere", "phantom", "train")
    with pytest.raises(DataError,
                       match=r"'drive' is not prepared.*launch\.prepare "
                       r"--dataset=drive"):
      sources.open_split(phantom_dir, "drive", "train")
    with pytest.raises(DataError,
                       match=r"no split 'val'.*\['test', 'train'\]"):
      sources.open_split(phantom_dir, "phantom", "val")

  def test_open_sources(self, phantom_dir):
    opened = sources.open_sources(phantom_dir, "phantom:train, phantom:test")
    assert [len(s) for s in opened] == [10, 3]
    for bad in ("phantom", "phantom:train,", "a:b:c"):
      with pytest.raises(DataError, match=f"bad data sources string '{bad}'"):
        sources.open_sources(phantom_dir, bad)


# ---------------------------------------------------------------------------
# Grain pipelines.


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _match_stems(images: np.ndarray, source) -> list[str]:
  """Stems of the source images equal to each (full-image) crop."""
  originals = {
      stem: record["image"].astype(np.float32) / 255
      for stem, record in _by_stem(source).items()
  }
  found = []
  for image in images:
    hits = [s for s, o in originals.items() if np.array_equal(o, image)]
    assert len(hits) == 1
    found.append(hits[0])
  return found


def _nearest_stems(images: np.ndarray, source) -> list[str]:
  """Stem of the source image closest to each whole-image view."""
  originals = _by_stem(source)
  found = []
  for image in images:
    errors = {stem: np.abs(record["image"].astype(np.float32) / 255
                           - image).mean()
              for stem, record in originals.items()}
    stem = min(errors, key=errors.get)
    assert errors[stem] < 0.02, errors[stem]
    found.append(stem)
  return found


class TestPipelines:

  def test_pretrain_shapes_and_ranges(self, phantom_dir):
    ds = pipeline.pretrain_dataset(
        phantom_dir, "phantom:train,phantom:test", image_size=24,
        in_channels=1, area=(0.08, 1.0), aspect=(3 / 4, 4 / 3), local_batch=4,
        seed=0)
    batch = next(iter(ds))
    assert sorted(batch) == ["view1", "view2"]
    for view in batch.values():
      assert view.shape == (4, 24, 24, 1) and view.dtype == np.float32
      assert 0.0 <= view.min() and view.max() <= 1.0
    assert not np.array_equal(batch["view1"], batch["view2"])

  @pytest.mark.parametrize("global_batch", [3, 4, 7])
  def test_shuffled_epochs_never_repeat_within_a_batch(self, global_batch):
    """Plain shuffle-repeat repeats elements in a batch; epochs cut do not."""
    import grain  # pylint: disable=g-import-not-at-top
    pool = grain.MapDataset.range(10)
    aligned = pipeline.shuffled_epochs(pool, seed=0,
                                       global_batch=global_batch, what="pool")
    plain = pool.seed(0).shuffle().repeat()
    batches = lambda ds: [[ds[b * global_batch + i] for i in
                           range(global_batch)] for b in range(60)]
    assert all(len(set(b)) == global_batch for b in batches(aligned))
    assert any(len(set(b)) < global_batch for b in batches(plain))
    # The dropped remainder changes between epochs: all elements are seen.
    assert {e for b in batches(aligned) for e in b} == set(range(10))

  def test_shuffled_epochs_rejects_a_pool_smaller_than_the_batch(self):
    import grain  # pylint: disable=g-import-not-at-top
    with pytest.raises(DataError, match=r"pool 'x' has 5 elements, fewer "
                       r"than the global batch of 8.*config\.batch_size"):
      pipeline.shuffled_epochs(grain.MapDataset.range(5), seed=0,
                               global_batch=8, what="pool 'x'")

  def test_pretrain_batches_hold_distinct_images_across_processes(
      self, phantom_dir):
    """10 images, global batch 2 x 2: every global batch has 4 images."""
    source = sources.open_split(phantom_dir, "phantom", "train")
    def make(process_index):
      return iter(pipeline.pretrain_dataset(
          phantom_dir, "phantom:train", image_size=48, in_channels=3,
          area=(1.0, 1.0), aspect=(1.0, 1.0), local_batch=2, seed=1,
          process_index=process_index, process_count=2))
    parts = [_take(make(p), 12) for p in (0, 1)]
    for first, second in zip(*parts):
      stems = _nearest_stems(
          np.concatenate([first["view1"], second["view1"]]), source)
      assert len(set(stems)) == 4, stems

  def test_finetune_shapes_and_ranges(self, phantom_dir):
    ds = pipeline.finetune_dataset(
        phantom_dir, "phantom", "train", indices=[0, 2, 5], crop_size=16,
        in_channels=3, local_batch=3, seed=0)
    batch = next(iter(ds))
    assert batch["image"].shape == (3, 16, 16, 3)
    assert batch["image"].dtype == np.float32
    assert batch["mask"].shape == (3, 16, 16)
    assert batch["mask"].dtype == np.int32
    assert batch["weight"].shape == (3, 16, 16)
    assert batch["weight"].dtype == np.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert set(np.unique(batch["mask"])) <= {0, 1}
    assert set(np.unique(batch["weight"])) <= {0.0, 1.0}

  def test_finetune_pads_small_images_with_zero_weight(self, phantom_dir):
    ds = pipeline.finetune_dataset(
        phantom_dir, "phantom", "test", indices=[0], crop_size=64,
        in_channels=3, local_batch=1, seed=0)
    batch = next(iter(ds))
    np.testing.assert_array_equal(batch["weight"][0, 48:], 0)
    np.testing.assert_array_equal(batch["image"][0, :, 48:], 0)

  def test_finetune_uses_only_given_indices(self, phantom_dir):
    source = sources.open_split(phantom_dir, "phantom", "train")
    indices = [1, 4, 7]
    ds = pipeline.finetune_dataset(
        phantom_dir, "phantom", "train", indices=indices, crop_size=48,
        in_channels=3, local_batch=3, seed=1)
    seen = {s for b in _take(iter(ds), 4) for s in
            _match_stems(b["image"], source)}
    assert seen == {sources.stem_of(source[i]) for i in indices}

  @pytest.mark.parametrize("kind", ["pretrain", "finetune"])
  def test_processes_split_the_global_batch(self, phantom_dir, kind):
    """2 processes x 3 examples == 1 process x 6, batch for batch."""
    def make(local_batch, process_index, process_count):
      common = dict(local_batch=local_batch, seed=3,
                    process_index=process_index, process_count=process_count)
      if kind == "pretrain":
        return pipeline.pretrain_dataset(
            phantom_dir, "phantom:train", image_size=16, in_channels=3,
            area=(0.08, 1.0), aspect=(3 / 4, 4 / 3), **common)
      return pipeline.finetune_dataset(
          phantom_dir, "phantom", "train", indices=range(10), crop_size=16,
          in_channels=3, **common)

    single = _take(iter(make(6, 0, 1)), 3)
    parts = [_take(iter(make(3, p, 2)), 3) for p in (0, 1)]
    for b, want in enumerate(single):
      for key in want:
        got = np.concatenate([parts[0][b][key], parts[1][b][key]])
        np.testing.assert_array_equal(want[key], got)
    # The two processes read different examples.
    key = sorted(single[0])[0]
    assert not np.array_equal(parts[0][0][key], parts[1][0][key])

  def test_fewer_images_than_processes_still_work(self, phantom_dir):
    source = sources.open_split(phantom_dir, "phantom", "train")
    for process_index in range(3):
      ds = pipeline.finetune_dataset(
          phantom_dir, "phantom", "train", indices=[2, 3], crop_size=48,
          in_channels=3, local_batch=2, seed=0, process_index=process_index,
          process_count=3)
      batch = next(iter(ds))
      assert set(_match_stems(batch["image"], source)) <= {
          sources.stem_of(source[i]) for i in (2, 3)}

  @pytest.mark.parametrize("kind", ["pretrain", "finetune"])
  def test_iterator_state_resumes_exactly(self, phantom_dir, kind):
    if kind == "pretrain":
      ds = pipeline.pretrain_dataset(
          phantom_dir, "phantom:train", image_size=16, in_channels=3,
          area=(0.08, 1.0), aspect=(3 / 4, 4 / 3), local_batch=3, seed=4)
    else:
      ds = pipeline.finetune_dataset(
          phantom_dir, "phantom", "train", indices=range(10), crop_size=16,
          in_channels=1, local_batch=3, seed=4)
    iterator = iter(ds)
    _take(iterator, 3)
    state = iterator.get_state()
    expected = _take(iterator, 2)
    resumed = iter(ds)
    resumed.set_state(state)
    for want, got in zip(expected, _take(resumed, 2)):
      assert sorted(want) == sorted(got)
      for key in want:
        np.testing.assert_array_equal(want[key], got[key])
    fresh = next(iter(ds))
    key = sorted(fresh)[0]
    assert not np.array_equal(fresh[key], expected[0][key])

  @pytest.mark.slow  # Spawns a worker process: a few seconds.
  def test_worker_processes_resume_exactly(self, phantom_dir):
    ds = pipeline.finetune_dataset(
        phantom_dir, "phantom", "train", indices=[0, 1, 2, 3], crop_size=16,
        in_channels=3, local_batch=2, seed=0, worker_count=1)
    iterator = iter(ds)
    try:
      first = next(iterator)
      assert first["image"].shape == (2, 16, 16, 3)
      state = iterator.get_state()
      expected = next(iterator)
    finally:
      iterator.close()
    resumed = iter(ds)
    try:
      resumed.set_state(state)
      got = next(resumed)
    finally:
      resumed.close()
    for key in expected:
      np.testing.assert_array_equal(expected[key], got[key])

  def test_choose_labeled(self, phantom_dir):
    source = sources.open_split(phantom_dir, "phantom", "train")
    chosen = pipeline.choose_labeled(source, 4, seed=0)
    assert chosen == sorted(chosen) and len(set(chosen)) == 4
    assert pipeline.choose_labeled(source, 4, seed=0) == chosen
    assert pipeline.choose_labeled(source, 4, seed=1) != chosen
    assert pipeline.choose_labeled(source, 10, seed=0) == list(range(10))
    # Same records in reverse order: the same stems must be chosen.
    records = [source[i] for i in range(len(source))]
    reversed_records = records[::-1]
    chosen_reversed = pipeline.choose_labeled(reversed_records, 4, seed=0)
    assert ({sources.stem_of(reversed_records[i]) for i in chosen_reversed} ==
            {sources.stem_of(records[i]) for i in chosen})

  def test_choose_labeled_errors(self, phantom_dir):
    source = sources.open_split(phantom_dir, "phantom", "train")
    for bad in (0, 11):
      with pytest.raises(DataError, match=f"num_labeled={bad}.*10 records"):
        pipeline.choose_labeled(source, bad, seed=0)
    unlabeled = [dict(source[i], has_mask=False) for i in range(len(source))]
    with pytest.raises(DataError, match="have no mask"):
      pipeline.choose_labeled(unlabeled, 2, seed=0)


# ---------------------------------------------------------------------------
# Real data (../shared/data); skipped when absent.


@pytest.mark.real_data
class TestRealData:

  def test_drive(self, shared_data, tmp_path):
    prepare_lib.prepare("drive", shared_data / "drive", tmp_path)
    for split in ("train", "test"):
      source = sources.open_split(tmp_path, "drive", split)
      assert len(source) == 20
      records = [source[i] for i in range(len(source))]
      for record in records:
        assert record["image"].shape == (584, 565, 3)
        assert record["mask"].shape == record["fov"].shape == (584, 565)
        assert set(np.unique(record["mask"])) == {0, 1}
        assert set(np.unique(record["fov"])) == {0, 1}
      fraction = np.mean([r["mask"].mean() for r in records])
      assert 0.08 <= fraction <= 0.093
    train_stems = sources.stems(sources.open_split(tmp_path, "drive", "train"))
    assert sorted(train_stems)[0] == "21_training"

  def test_hrf_long_side(self, shared_data):
    folder = shared_data / "hrf_unlabeled" / "images"
    for name in ("01_h.jpg", "01_dr.JPG"):
      example = readers.load_example(folder / name,
                                     long_side=readers.HRF_LONG_SIDE)
      assert example["image"].shape == (389, 584, 3)
      assert example["fov"].shape == (389, 584)
      assert not example["has_mask"]
      # Still a fundus photo: a dark corner and a bright reddish centre.
      centre = example["image"][150:240, 250:340].mean(axis=(0, 1))
      assert centre[0] > 100 and centre[0] > centre[2]
      assert example["image"][:10, :10].mean() < 30

  def test_fundus_pool_matches_drive_scale(self, shared_data):
    # The pretraining pool is read as shipped (576 px): its FOV is then
    # about as wide as DRIVE's (about 540 px), so no rescaling is needed.
    folder = shared_data / "fundus_pool"
    images = readers.list_images(folder / "images")
    assert len(images) == 1548
    for stem in sorted(images)[:3]:
      example = readers.load_example(images[stem],
                                     default_fov=fov_lib.estimate_fov)
      columns = np.flatnonzero(example["fov"].any(axis=0))
      assert 520 <= columns[-1] - columns[0] + 1 <= 560

  def test_isbi2012_membranes(self, shared_data):
    examples = readers.read_isbi2012(shared_data / "isbi2012_em", "train")
    assert len(examples) == 30
    assert examples[0]["image"].shape == (512, 512, 1)
    membrane = np.mean([e["mask"].mean() for e in examples])
    assert 0.18 <= membrane <= 0.26  # MANIFEST: membrane ~22% of pixels.
