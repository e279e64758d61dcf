"""Full-resolution inference: sliding-window and whole-image prediction.

docs/protocol.md section 1 scores every test image at its own resolution,
with no resizing of the output. A model trained on small patches either sees
the image window by window (`sliding_window_predict`) or all at once after
padding to the U-Net's downsampling factor (`whole_image_predict`). Both take
a `predict_fn` that maps a float32 batch (b, h, w, C) to logits (b, h, w, K);
it may be jitted, so it is always called with one fixed batch shape and
compiles once.

The functions work on host numpy arrays: the per-window bookkeeping is cheap
next to the model, and doing it on the host keeps `predict_fn` the only thing
that touches devices.
"""
from collections.abc import Callable
import math

import numpy as np

from medclr import errors

PredictFn = Callable[[np.ndarray], object]


def gaussian_importance_map(window: int, sigma_scale: float = 0.125):
  """Window weights that fall off from the centre (nnU-Net / MONAI style).

  sigma = sigma_scale * window, as nnU-Net (1/8) and MONAI's
  `sliding_window_inference(mode="gaussian", sigma_scale=0.125)`. Written here
  because MONAI depends on PyTorch, which medclr does not use.

  Args:
    window: side of the square window in pixels.
    sigma_scale: Gaussian sigma as a fraction of the window side.

  Returns:
    float64 array (window, window), 1 at the centre and strictly positive at
    the corners, so every covered pixel gets a non-zero total weight.
  """
  centre = (window - 1) / 2.0
  sigma = sigma_scale * window
  offsets = np.arange(window, dtype=np.float64) - centre
  profile = np.exp(-0.5 * (offsets / sigma) ** 2)
  weights = np.outer(profile, profile)
  # Corners of large windows underflow towards 0; a floor keeps the average
  # defined there (nnU-Net replaces zeros by the smallest non-zero weight).
  return np.maximum(weights / weights.max(), 1e-6)


def _window_weights(window, weighting):
  """The importance map named by `weighting` ('gaussian' or 'uniform')."""
  if weighting == "gaussian":
    return gaussian_importance_map(window)
  if weighting == "uniform":
    return np.ones((window, window), dtype=np.float64)
  raise ValueError(f"weighting must be 'gaussian' or 'uniform', got "
                   f"{weighting!r}")


def _split_padding(total):
  """Splits `total` pad pixels between both sides (extra pixel at the end)."""
  return total // 2, total - total // 2


def _sliding_padding(size, window, stride):
  """(before, after) padding so windows at multiples of `stride` tile `size`."""
  covered = max(size, window)
  num_windows = math.ceil((covered - window) / stride) + 1
  return _split_padding((num_windows - 1) * stride + window - size)


def _reflect_pad(image, pad_h, pad_w):
  """Mirror-pads an (H, W, C) image; mirrored context looks like tissue."""
  # numpy repeats the reflection when the pad exceeds the image, so images
  # smaller than the window still work.
  return np.pad(image, (pad_h, pad_w, (0, 0)), mode="reflect")


def _check_image(image):
  """Returns `image` as float32 (H, W, C) or raises a clear ValueError."""
  image = np.asarray(image, dtype=np.float32)
  if image.ndim != 3:
    raise ValueError(f"image must have shape (H, W, C), got shape "
                     f"{image.shape}")
  return image


def _run_predict(predict_fn, batch, expected_hw):
  """Calls `predict_fn` and checks it returned (b, h, w, K) logits."""
  logits = np.asarray(predict_fn(batch))
  b, h, w = batch.shape[0], expected_hw[0], expected_hw[1]
  if logits.ndim != 4 or logits.shape[:3] != (b, h, w):
    raise ValueError(f"predict_fn returned shape {logits.shape} for input "
                     f"{batch.shape}; expected logits ({b}, {h}, {w}, K)")
  return logits


def sliding_window_predict(predict_fn: PredictFn,
                           image,
                           window: int,
                           overlap: float = 0.5,
                           batch_size: int = 8,
                           *,
                           weighting: str = "gaussian") -> np.ndarray:
  """Logits for a full-resolution image, predicted window by window.

  The image is mirror-padded so that square windows at a stride of
  `window * (1 - overlap)` cover it, the windows go through `predict_fn` in
  batches of exactly `batch_size` (the last batch is filled with zeros and
  those outputs dropped), the overlapping logits are averaged with per-window
  weights, and the result is cropped back to (H, W).

  Weighting defaults to a Gaussian importance map (as nnU-Net and MONAI): a
  convolutional net sees zero padding at a window's edge, so its predictions
  there are the least reliable, and down-weighting them removes seams between
  windows. 'uniform' gives the plain mean of every window that covers a pixel.

  Args:
    predict_fn: maps a float32 array (batch_size, window, window, C) to logits
      (batch_size, window, window, K); numpy or JAX output.
    image: float array (H, W, C) at full resolution.
    window: side of the square window, in pixels.
    overlap: fraction of the window shared by neighbours, in [0, 1).
    batch_size: windows per `predict_fn` call (fixed, so a jitted function
      compiles once).
    weighting: 'gaussian' or 'uniform'.

  Returns:
    float32 logits (H, W, K).
  """
  image = _check_image(image)
  _check_window_args(window, overlap, batch_size)
  weights = _window_weights(window, weighting)
  stride = max(1, int(window * (1.0 - overlap)))

  height, width, _ = image.shape
  pad_h = _sliding_padding(height, window, stride)
  pad_w = _sliding_padding(width, window, stride)
  padded = _reflect_pad(image, pad_h, pad_w)
  averaged = _weighted_windows(predict_fn, padded, window, stride, batch_size,
                               weights)
  top, left = pad_h[0], pad_w[0]
  return averaged[top:top + height, left:left + width].astype(np.float32)


def _check_window_args(window, overlap, batch_size):
  if window < 1:
    raise ValueError(f"window must be a positive number of pixels, got "
                     f"{window}")
  if not 0.0 <= overlap < 1.0:
    raise ValueError(f"overlap must be in [0, 1), got {overlap}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _weighted_windows(predict_fn, padded, window, stride, batch_size, weights):
  """Weighted mean of the window logits over the padded image (float64)."""
  starts = [(y, x)
            for y in range(0, padded.shape[0] - window + 1, stride)
            for x in range(0, padded.shape[1] - window + 1, stride)]
  # float64 sums so that equal window logits average back to the same float32
  # value exactly, whatever the weights.
  logit_sum = None
  weight_sum = np.zeros(padded.shape[:2], dtype=np.float64)
  for first in range(0, len(starts), batch_size):
    batch_starts = starts[first:first + batch_size]
    batch = np.zeros((batch_size, window, window, padded.shape[-1]),
                     np.float32)
    for i, (y, x) in enumerate(batch_starts):
      batch[i] = padded[y:y + window, x:x + window]
    logits = _run_predict(predict_fn, batch, (window, window))
    if logit_sum is None:
      logit_sum = np.zeros(padded.shape[:2] + logits.shape[-1:], np.float64)
    for i, (y, x) in enumerate(batch_starts):
      logit_sum[y:y + window, x:x + window] += weights[..., None] * logits[i]
      weight_sum[y:y + window, x:x + window] += weights
  return logit_sum / weight_sum[..., None]


def whole_image_predict(predict_fn: PredictFn, image,
                        multiple: int) -> np.ndarray:
  """Logits for a full image in one call, padded to a multiple of `multiple`.

  A U-Net with L pooling levels needs sides divisible by 2**L; the image is
  mirror-padded up to the next multiple on both sides and the logits are
  cropped back, so the output aligns with the input pixel for pixel.

  Args:
    predict_fn: maps float32 (1, H', W', C) to logits (1, H', W', K).
    image: float array (H, W, C).
    multiple: required divisor of the padded height and width (e.g. 16).

  Returns:
    float32 logits (H, W, K).
  """
  image = _check_image(image)
  height, width, _ = image.shape
  padded = pad_to_multiple(image, multiple)
  logits = _run_predict(predict_fn, padded[None], padded.shape[:2])[0]
  top, left = (-height % multiple) // 2, (-width % multiple) // 2
  return logits[top:top + height, left:left + width].astype(np.float32)


def pad_to_multiple(image, multiple: int) -> np.ndarray:
  """An (H, W, C) image mirror-padded on both sides to sides divisible by
  `multiple` (the extra pixel of an odd pad at the end)."""
  if multiple < 1:
    raise ValueError(f"multiple must be >= 1, got {multiple}")
  height, width = np.shape(image)[:2]
  return _reflect_pad(image, _split_padding(-height % multiple),
                      _split_padding(-width % multiple))


def foreground_probability(logits) -> np.ndarray:
  """Foreground probability (H, W) from binary-segmentation logits (H, W, K).

  K = 1: sigmoid of the single logit; K = 2: softmax probability of class 1.
  This is the `prob` that `medclr.metrics.segmentation_metrics` expects.
  """
  logits = np.asarray(logits, dtype=np.float64)
  if logits.ndim != 3 or logits.shape[-1] not in (1, 2):
    raise ValueError(f"logits must have shape (H, W, 1) or (H, W, 2) for a "
                     f"binary task, got {logits.shape}")
  # Both cases are a sigmoid of a logit difference. exp(-|margin|) never
  # overflows and keeps precision for very confident background pixels.
  margin = (logits[..., 0] if logits.shape[-1] == 1 else
            logits[..., 1] - logits[..., 0])
  decay = np.exp(-np.abs(margin))
  prob = np.where(margin >= 0, 1.0 / (1.0 + decay), decay / (1.0 + decay))
  return prob.astype(np.float32)


# Test-time augmentation: (forward, inverse) pairs on (H, W, ...) arrays.
_FLIPS = (
    (lambda a: a, lambda a: a),
    (lambda a: a[:, ::-1], lambda a: a[:, ::-1]),
    (lambda a: a[::-1], lambda a: a[::-1]),
    (lambda a: a[::-1, ::-1], lambda a: a[::-1, ::-1]),
)
_TRANSPOSE = (lambda a: a.swapaxes(0, 1), lambda a: a.swapaxes(0, 1))
TTA_MODES = {
    "none": _FLIPS[:1],
    "flips": _FLIPS,
    # The 8 symmetries of the square: the flips, and the flips of the
    # transpose (which are the 90-degree rotations and the anti-transpose).
    "d4": _FLIPS + tuple(
        (lambda a, f=f: f(_TRANSPOSE[0](a)), lambda a, f=f: _TRANSPOSE[1](f(a)))
        for f, _ in _FLIPS),
}


def tta_predict(predict_image: Callable[[np.ndarray], np.ndarray],
                image, mode: str = "none") -> np.ndarray:
  """Mean logits of `predict_image` over the symmetries of `mode`.

  Args:
    predict_image: (H, W, C) image -> (H, W, K) logits, any H and W.
    image: the image.
    mode: 'none', 'flips' (both axes: 4 passes) or 'd4' (8 passes).

  Returns:
    (H, W, K) float32 logits averaged in the image's own orientation.
  """
  if mode not in TTA_MODES:
    raise errors.ConfigError(
        f"config.eval.tta={mode!r}: expected one of "
        f"{sorted(TTA_MODES)}")
  total = None
  for forward, inverse in TTA_MODES[mode]:
    logits = inverse(predict_image(np.ascontiguousarray(forward(image))))
    total = logits if total is None else total + logits
  return (total / len(TTA_MODES[mode])).astype(np.float32)


# config.eval.scales: one scale per image, from its field of view
# (`medclr.data.preprocess.Preprocess.test_scale`).
AUTO_SCALES = "auto"


def check_scales(text) -> None:
  """Raises ConfigError unless `text` is 'auto' or a list of scales."""
  if str(text) != AUTO_SCALES:
    parse_scales(text)


def parse_scales(text) -> tuple[float, ...]:
  """`config.eval.scales`: comma list of input scales whose logits are
  averaged (multi-scale test-time augmentation), e.g. '1,1.25'."""
  try:
    scales = tuple(float(s) for s in str(text).split(",") if s.strip())
  except ValueError:
    scales = ()
  if not scales or not all(0.25 <= s <= 4 for s in scales):
    raise errors.ConfigError(
        f"config.eval.scales={text!r}: expected a comma list of scales in "
        "[0.25, 4], e.g. '1' or '1,1.25'")
  return scales
