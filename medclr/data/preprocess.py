"""Per-record preprocessing shared by training, pretraining and inference.

`Preprocess` holds the two choices that must be identical wherever a model
meets an image: the input normalisation (`medclr.data.normalize`) and the field
of view's target diameter in pixels (resampling to a common vessel scale
across cameras, `docs/preprocessing.md`). Training pipelines apply
`Preprocess.record` once per record (then crop); inference applies
`Preprocess.image` to the full image and `Preprocess.restore` to map the
prediction back to the image's own grid, where metrics are computed.
A fine-tuning run saves its `Preprocess` to `<workdir>/preprocess.json`.
"""
import dataclasses
import json
from typing import Any, Sequence

from etils import epath
import numpy as np
from PIL import Image

from medclr import errors
from medclr.data import crops
from medclr.data import fov as fov_lib
from medclr.data import normalize
from medclr.data import readers

FILENAME = "preprocess.json"
CONTRAST = ("none", "clahe")
CHANNELS = ("rgb", "green")


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Normalisation and resampling of one image.

  Attributes:
    normalize: 'none', 'image' (per-image, per-channel standardisation inside
      the FOV) or 'dataset' (fixed per-channel statistics, `dataset_stats`).
    fov_diameter: resample so the FOV is this many pixels across; 0 keeps
      the native resolution.
    in_channels: channels the model takes (1 or 3).
    dataset_stats: (2, C) nested lists, mean and std, for 'dataset'.
    contrast: 'none' or 'clahe' (contrast-limited adaptive histogram
      equalisation of the brightness, before normalisation).
    train_fov_diameter: median FOV diameter (px, native resolution) of the
      labelled training images; 0 if unknown (runs older than it).
    channels: 'rgb' (as stored) or 'green' (a colour image's green channel
      in all three: fundus vessels contrast most there, and red and blue
      differ most between cameras).
  """
  normalize: str = "none"
  fov_diameter: int = 0
  in_channels: int = 3
  dataset_stats: Any = None
  contrast: str = "none"
  train_fov_diameter: float = 0.0
  channels: str = "rgb"

  def __post_init__(self):
    normalize.check_mode(self.normalize)
    if self.contrast not in CONTRAST:
      raise errors.ConfigError(
          f"config.data.contrast={self.contrast!r}: expected one of "
          f"{CONTRAST}")
    if self.channels not in CHANNELS:
      raise errors.ConfigError(
          f"config.data.channels={self.channels!r}: expected one of "
          f"{CHANNELS}")
    if self.fov_diameter < 0:
      raise errors.ConfigError(
          f"config.data.fov_diameter must be >= 0 (0: native "
          f"resolution), got {self.fov_diameter}")

  def scale(self, fov: np.ndarray) -> float:
    """Resampling factor for an image whose FOV mask is `fov`."""
    if not self.fov_diameter:
      return 1.0
    return self.fov_diameter / fov_lib.fov_diameter(fov)

  def test_scale(self, fov: np.ndarray) -> float:
    """`config.eval.scales='auto'`: the input scale for an image whose
    (native) FOV mask is `fov`.

    With `fov_diameter` set, `image` already brings every FOV to the
    training scale: 1. Otherwise the ratio of the training images' FOV to
    this image's, so a camera of another resolution is seen at the scale
    the model was trained at (1 when the training FOV is unknown).
    """
    if self.fov_diameter or not self.train_fov_diameter:
      return 1.0
    return self.train_fov_diameter / fov_lib.fov_diameter(fov)

  def stats(self, image: np.ndarray, fov: np.ndarray | None) -> np.ndarray:
    """(2, C) normalisation stats of a float (H, W, C) image."""
    return normalize.stats_for(self.normalize, image, fov, self.dataset_stats)

  def record(self, record: dict[str, Any]) -> dict[str, Any]:
    """A training record resampled, with its 'norm' stats (2, C) added."""
    out = dict(record)
    out["image"], out["fov"], size_hw = self._resample(record["image"],
                                                       record["fov"])
    out["image"] = self.enhance(out["image"])
    if size_hw != np.shape(record["mask"]):
      out["mask"] = resize_nearest(np.asarray(record["mask"]), size_hw)
    image = crops.to_float(np.asarray(out["image"]), self.in_channels)
    out["norm"] = self.stats(image, out["fov"])
    return out

  def image(self, image: np.ndarray, fov: np.ndarray | None):
    """A full image for inference: (float image at model scale, stats).

    `fov` None estimates the field of view (`medclr.data.fov`).
    """
    if fov is None:
      fov = fov_lib.estimate_fov(image)
    image, fov, _ = self._resample(image, fov)
    image = crops.to_float(self.enhance(image), self.in_channels)
    return image, self.stats(image, fov)

  def enhance(self, image: np.ndarray) -> np.ndarray:
    """The `channels` and `contrast` steps on a uint8 (H, W, C) image (same
    dtype and shape)."""
    image = np.asarray(image)
    if self.channels == "green" and image.ndim == 3 and image.shape[-1] == 3:
      image = np.repeat(image[..., 1:2], 3, axis=-1)
    if self.contrast == "none":
      return image
    return clahe(image)

  def _resample(self, image, fov):
    """(image, fov, size_hw) at the model's scale (unchanged at scale 1)."""
    fov = np.asarray(fov)
    size_hw = _scaled_size(fov.shape, self.scale(fov))
    if size_hw == fov.shape:
      return image, fov, size_hw
    return (resize_image(np.asarray(image), size_hw),
            resize_nearest(fov, size_hw), size_hw)

  def model_input(self, image: np.ndarray, fov: np.ndarray | None):
    """The normalised float image at model scale that inference feeds."""
    model_image, stats = self.image(image, fov)
    return normalize.apply(model_image, stats)

  @staticmethod
  def restore(prediction: np.ndarray, size_hw: Sequence[int]) -> np.ndarray:
    """Bilinear resize of an (h, w, K) float prediction back to size_hw."""
    if tuple(prediction.shape[:2]) == tuple(size_hw):
      return prediction
    return resize_image(prediction.astype(np.float32), tuple(size_hw))

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    if self.dataset_stats is not None:
      out["dataset_stats"] = np.asarray(self.dataset_stats).tolist()
    return out


def from_config(data_cfg, dataset_stats=None) -> Preprocess:
  """The `Preprocess` of a `config.data` block."""
  return Preprocess(
      normalize=data_cfg.get("normalize", "none"),
      fov_diameter=int(data_cfg.get("fov_diameter", 0)),
      in_channels=data_cfg.in_channels, dataset_stats=dataset_stats,
      contrast=data_cfg.get("contrast", "none"),
      channels=data_cfg.get("channels", "rgb"))


def build(data_cfg, sources: Sequence) -> Preprocess | None:
  """`config.data`'s `Preprocess` over opened `sources`; None if it is a no-op.

  'dataset' statistics are computed over every image of `sources`.
  """
  spec = from_config(data_cfg)
  if (spec.normalize == "none" and not spec.fov_diameter
      and spec.contrast == "none" and spec.channels == "rgb"):
    return None
  if spec.normalize == "dataset":
    stats = dataset_stats(sources, spec)
    spec = dataclasses.replace(spec, dataset_stats=stats.tolist())
  return spec


def median_fov_diameter(fovs) -> float:
  """Median diameter (px) of FOV masks."""
  return float(np.median([fov_lib.fov_diameter(fov) for fov in fovs]))


def save(workdir, preprocess: Preprocess) -> None:
  """Writes `<workdir>/preprocess.json` atomically (temporary file and
  rename); `workdir` is any epath: a local directory or gs://..."""
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  path = root / FILENAME
  tmp = root / (FILENAME + ".tmp")
  tmp.write_text(json.dumps(preprocess.to_json(), indent=2))
  tmp.replace(path)


def load(workdir, data_cfg) -> Preprocess:
  """The workdir's saved `Preprocess`; runs older than it used none."""
  path = epath.Path(workdir) / FILENAME
  if not path.exists():
    return Preprocess(in_channels=data_cfg.in_channels)
  return Preprocess(**json.loads(path.read_text()))


def dataset_stats(sources: Sequence, preprocess: Preprocess) -> np.ndarray:
  """'dataset' stats pooled over every FOV pixel of every image of `sources`
  (after resampling)."""
  plain = dataclasses.replace(preprocess, normalize="none")

  def pairs():
    for source in sources:
      for index in range(len(source)):
        record = plain.record(source[index])
        yield (crops.to_float(np.asarray(record["image"]),
                              preprocess.in_channels), record["fov"])

  return normalize.dataset_stats(pairs())


def clahe(image: np.ndarray) -> np.ndarray:
  """CLAHE of a uint8 (H, W[, C]) image's brightness, as uint8.

  Colour images are equalised in their HSV value channel (hue and
  saturation kept); tiles are 1/8 of the image side, clip limit 0.01
  (scikit-image's defaults).
  """
  from skimage import exposure  # pylint: disable=g-import-not-at-top
  if image.dtype != np.uint8:
    raise readers.DataError(f"CLAHE expects a uint8 image, got {image.dtype}")
  gray = image.ndim == 3 and image.shape[-1] == 1
  out = exposure.equalize_adapthist(image[..., 0] if gray else image,
                                    clip_limit=0.01)
  out = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
  return out[..., None] if gray else out


def _scaled_size(shape_hw, scale: float) -> tuple[int, int]:
  if scale == 1.0:
    return tuple(shape_hw[:2])
  return tuple(max(1, int(round(s * scale))) for s in shape_hw[:2])


def resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """Antialiased bilinear resize of (H, W[, C]) uint8 or float, same dtype."""
  size_wh = (size_hw[1], size_hw[0])
  if image.dtype == np.uint8 and (image.ndim == 2 or image.shape[-1] in (1, 3)):
    squeeze = image.ndim == 3 and image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(pil.resize(size_wh, Image.Resampling.BILINEAR))
    return out[..., None] if squeeze else out
  if image.ndim == 2:
    return resize_image(image[..., None], size_hw)[..., 0]
  # Pillow has no multi-channel float mode: one 'F' image per channel.
  return np.stack([
      np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c],
                                                      np.float32))
                 .resize(size_wh, Image.Resampling.BILINEAR))
      for c in range(image.shape[-1])], axis=-1)


def resize_nearest(labels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
  """Nearest-neighbour resize of an (H, W) label map, so labels stay labels."""
  return readers.resize_labels(np.asarray(labels, np.uint8), tuple(size_hw))
