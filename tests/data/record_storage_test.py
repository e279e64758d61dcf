"""Prepared 2D records store images encoded and decode to the readers' pixels.

Covers `medclr.data.image_codec` through `launch.prepare`'s library path:
JPEG and plain PNG files kept byte for byte, everything else PNG-encoded,
records no larger than 1.5x the source files, every decoded image equal to
what `readers` read, and sets of the older version (decoded pixels) or of a
newer one.
"""
import io
import pathlib
import pickle
import shutil
import tempfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from medclr.data import fov as fov_lib
from medclr.data import image_codec
from medclr.data import prepare as prepare_lib
from medclr.data import readers
from medclr.data import sources
from medclr.data import tfds_builder

DataError = readers.DataError
SIZE_LIMIT = 1.5  # records / source bytes (issue 27)


def _fundus_like(seed: int, height: int = 160, width: int = 192) -> np.ndarray:
  """Smooth colour gradients plus noise: JPEG/PNG sizes like real photos'."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
  base = np.stack([200 * xx, 120 * yy + 40, 60 * (1 - xx) + 20], -1)
  noise = rng.normal(0, 6, (height, width, 3))
  return np.clip(base + noise, 0, 255).astype(np.uint8)


def _save(path: pathlib.Path, array: np.ndarray, **kwargs) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path, **kwargs)
  return path


@pytest.fixture(scope="module")
def mixed_pool(tmp_path_factory):
  """An unlabelled <root>/images/ folder in every kind of source format."""
  root = tmp_path_factory.mktemp("mixed") / "pool"
  images = root / "images"
  _save(images / "rgb_jpeg.jpg", _fundus_like(0), quality=90)
  _save(images / "grey_jpeg.JPEG", _fundus_like(1)[..., 1], quality=85)
  _save(images / "rgb_png.png", _fundus_like(2))
  _save(images / "grey_png.png", _fundus_like(3)[..., 0])
  _save(images / "rgb_tiff.tif", _fundus_like(4))
  _save(images / "deep_png.png",
        _fundus_like(5)[..., 0].astype(np.uint16) * 250)  # 16-bit
  palette = Image.fromarray(_fundus_like(6)).quantize(64)
  palette.save(images / "palette.gif")
  return root


@pytest.fixture(scope="module")
def prepared(mixed_pool, tmp_path_factory):
  """(data_dir, records directory) of `mixed_pool` prepared as 'mixed'."""
  data_dir = tmp_path_factory.mktemp("records")
  path = prepare_lib.prepare("unlabeled", mixed_pool, data_dir, name="mixed")
  return data_dir, path


def _files(root: pathlib.Path) -> dict[str, pathlib.Path]:
  return {p.stem: p for p in (root / "images").iterdir()}


def _raw_records(data_dir) -> dict[str, dict]:
  """Undecoded records by stem: image_bytes and image_format as stored."""
  records = sources.open_split(data_dir, "mixed", "train").records
  return {sources.stem_of(records[i]): records[i]
          for i in range(len(records))}


def test_records_decode_to_the_readers_arrays(mixed_pool, prepared):
  data_dir, path = prepared
  assert path.name == tfds_builder.VERSION == "2.0.0"
  examples = {e["stem"]: e for e in readers.read_unlabeled(
      mixed_pool, default_fov=fov_lib.estimate_fov)}
  source = sources.open_split(data_dir, "mixed", "train")
  assert len(source) == len(examples) == 7
  for index in range(len(source)):
    record = source[index]
    want = examples[sources.stem_of(record)]
    assert set(record) == {"image", "mask", "fov", "has_mask", "stem"}
    assert record["image"].dtype == np.uint8
    for key in ("image", "mask", "fov"):
      np.testing.assert_array_equal(record[key], want[key], err_msg=key)


def test_jpeg_and_plain_png_are_stored_as_their_files(mixed_pool, prepared):
  files = _files(mixed_pool)
  stored = {stem: (r["image_format"].decode(), r["image_bytes"])
            for stem, r in _raw_records(prepared[0]).items()}
  for stem in ("rgb_jpeg", "grey_jpeg", "rgb_png", "grey_png"):
    kind = "jpeg" if "jpeg" in stem else "png"
    assert stored[stem] == (kind, files[stem].read_bytes()), stem
  # Re-encoded as PNG: TIFF, 16-bit PNG (scaled to 8 bits when read) and
  # palette GIF (mapped to RGB when read).
  for stem in ("rgb_tiff", "deep_png", "palette"):
    kind, data = stored[stem]
    assert kind == "png" and data != files[stem].read_bytes(), stem
    assert Image.open(io.BytesIO(data)).mode in ("L", "RGB")


def test_records_are_at_most_one_and_a_half_times_the_sources(mixed_pool,
                                                              prepared):
  source_bytes = sum(p.stat().st_size for p in _files(mixed_pool).values())
  record_bytes = sum(p.stat().st_size for p in prepared[1].iterdir())
  assert record_bytes <= SIZE_LIMIT * source_bytes, (record_bytes,
                                                     source_bytes)


def test_resized_images_are_stored_as_png_of_the_resized_pixels(mixed_pool,
                                                                tmp_path):
  prepare_lib.prepare("unlabeled", mixed_pool, tmp_path, name="mixed",
                      long_side=100, estimate_fov=False)
  records = sources.open_split(tmp_path, "mixed", "train")
  files = _files(mixed_pool)
  for index in range(len(records)):
    record, raw = records[index], records.records[index]
    stem = sources.stem_of(record)
    assert raw["image_format"] == b"png"
    assert max(record["image"].shape[:2]) == 100
    np.testing.assert_array_equal(
        record["image"], readers.load_image(files[stem], long_side=100))


def test_decoded_source_pickles_for_grain_workers(prepared):
  source = sources.open_split(prepared[0], "mixed", "train")
  again = pickle.loads(pickle.dumps(source))
  assert len(again) == len(source)
  np.testing.assert_array_equal(again[3]["image"], source[3]["image"])
  batch = source.__getitems__([0, 2])
  np.testing.assert_array_equal(batch[1]["image"], source[2]["image"])


def test_damaged_image_bytes_name_the_record():
  good = image_codec.encode_png(_fundus_like(0, 16, 16))
  with pytest.raises(DataError, match=r"record 4 \(x\) of s:train: the stored "
                     r"png image does not decode.*re-prepare"):
    image_codec.decode(good[:40], "png", "record 4 (x) of s:train")
  with pytest.raises(DataError, match="unknown stored image format 'webp'"):
    image_codec.decode(good, "webp", "record 4 (x) of s:train")
  # A PNG's bytes are not taken for a JPEG.
  with pytest.raises(DataError, match="does not decode"):
    image_codec.decode(good, "jpeg", "record 4 (x) of s:train")


# ---------------------------------------------------------------------------
# Sets of other record versions.


class _Version1(tfds_builder.Medclr2d, skip_registration=True):
  """The 2D records as medclr wrote them before issue 27: decoded pixels."""

  name = tfds_builder.BUILDER_NAME
  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    tensor = tfds.features.Tensor
    features = tfds.features.FeaturesDict({
        "image": tensor(shape=(None, None, None), dtype=np.uint8,
                        encoding="zlib"),
        "mask": tensor(shape=(None, None), dtype=np.uint8, encoding="zlib"),
        "fov": tensor(shape=(None, None), dtype=np.uint8, encoding="zlib"),
        "has_mask": tfds.features.Scalar(dtype=np.bool_),
        "stem": tfds.features.Text(),
    })
    return tfds.core.DatasetInfo(builder=self, features=features)

  def _generate_examples(self, examples):
    for example in examples:
      yield example["stem"], {key: example[key] for key in (
          "image", "mask", "fov", "has_mask", "stem")}


def _write_version1(data_dir, name, examples):
  def write(staging):
    with tempfile.TemporaryDirectory() as download_dir:
      _Version1(data_dir=str(staging),
                config=tfds.core.BuilderConfig(name=name),
                file_format="array_record",
                examples_by_split={"train": examples}).download_and_prepare(
                    download_dir=download_dir)
  tfds_builder.write_staged(data_dir, name, write)


def test_a_version1_set_still_reads_and_overwrite_shrinks_it(
    mixed_pool, tmp_path, capsys):
  examples = readers.read_unlabeled(mixed_pool)
  _write_version1(tmp_path, "mixed", examples)
  old = tmp_path / "medclr2d" / "mixed" / "1.0.0"
  assert tfds_builder.dataset_dir(tmp_path, "mixed") == old
  assert sources.available_datasets(tmp_path) == ["mixed"]
  source = sources.open_split(tmp_path, "mixed", "train")
  by_stem = {sources.stem_of(source[i]): source[i] for i in range(7)}
  for example in examples:
    np.testing.assert_array_equal(by_stem[example["stem"]]["image"],
                                  example["image"])
  prepare_lib.prepare("unlabeled", mixed_pool, tmp_path, name="mixed")
  assert "version 1.0.0) hold decoded pixels: --overwrite rewrites" in (
      capsys.readouterr().out)
  old_bytes = sum(p.stat().st_size for p in old.iterdir())
  new = prepare_lib.prepare("unlabeled", mixed_pool, tmp_path, name="mixed",
                            overwrite=True, estimate_fov=False)
  assert new.name == "2.0.0" and not old.exists()
  assert sum(p.stat().st_size for p in new.iterdir()) < old_bytes


def test_a_newer_version_set_is_a_one_line_error(prepared, tmp_path):
  newer = tmp_path / "medclr2d" / "mixed" / "3.0.0"
  shutil.copytree(prepared[1], newer)
  with pytest.raises(DataError) as error:
    sources.open_split(tmp_path, "mixed", "train")
  message = str(error.value)
  assert "\n" not in message
  assert "'mixed'" in message and "record version 3.0.0" in message
  assert "python -m launch.prepare" in message and "--overwrite" in message


# ---------------------------------------------------------------------------
# Real data (../shared/data); skipped when absent.


@pytest.mark.real_data
def test_real_pool_and_drive_records_are_the_readers_pixels(shared_data,
                                                            tmp_path):
  # 24 pool JPEGs (kept as they are) and DRIVE's 20 training TIFFs (PNG).
  pool = tmp_path / "pool"
  (pool / "images").mkdir(parents=True)
  for path in sorted((shared_data / "fundus_pool/images").iterdir())[:24]:
    shutil.copy(path, pool / "images" / path.name)
  prepare_lib.prepare("unlabeled", pool, tmp_path / "data", name="pool",
                      estimate_fov=False)
  prepare_lib.prepare("drive", shared_data / "drive", tmp_path / "data")
  drive = {e["stem"]: e for e in readers.read_drive(shared_data / "drive",
                                                    "train")}
  for name, split, want in (("pool", "train", None),
                            ("drive", "train", drive)):
    source = sources.open_split(tmp_path / "data", name, split)
    for index in range(len(source)):
      record = source[index]
      stem = sources.stem_of(record)
      if want is None:
        image = readers.load_image(pool / "images" / f"{stem}.jpg")
        assert source.records[index]["image_bytes"] == (
            pool / "images" / f"{stem}.jpg").read_bytes()
      else:
        image = want[stem]["image"]
        np.testing.assert_array_equal(record["mask"], want[stem]["mask"])
      np.testing.assert_array_equal(record["image"], image, err_msg=stem)
