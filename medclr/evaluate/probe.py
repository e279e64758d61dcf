"""Online probe: can the frozen encoder already tell vessel from background?

Pixels of fixed patches of a few labelled training images are embedded by
the encoder as hypercolumns (each level's feature vector at the pixel,
L2-normalised per level, concatenated). A closed-form ridge-regression
linear probe (or a cosine k-NN vote) fitted on the pixels of half the images
labels the pixels of the other half; `probe_accuracy` is its balanced
accuracy (0.5 is chance). Pixels are drawn half vessel, half background,
inside the FOV, from the labelled (training) split only: never a test image.
Neither probe has a training loop, so the number depends on the features
alone.
"""
import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from medclr import errors
from medclr.data import crops
from medclr.data import normalize
from medclr.data import pipeline
from medclr.data import sources as data_sources


@dataclasses.dataclass
class ProbeSet:
  """Normalised patches, sampled pixels, their labels, fit/query split."""
  patches: np.ndarray  # (N, S, S, C) float32
  coords: np.ndarray  # (N, P, 2) int32 (row, column) inside the patch
  labels: np.ndarray  # (N, P) int32, 1 = vessel
  fit: np.ndarray  # (N,) bool: pixels of this patch fit the k-NN


def _sample_pixels(mask, fov, count, rng):
  """`count` pixel coordinates inside `fov`, half vessel, half background."""
  coords, labels = [], []
  for label, want in ((1, count // 2), (0, count - count // 2)):
    rows, cols = np.nonzero((mask == label) & (fov > 0))
    if len(rows) == 0:
      continue
    pick = rng.choice(len(rows), size=want, replace=len(rows) < want)
    coords.append(np.stack([rows[pick], cols[pick]], axis=1))
    labels.append(np.full(want, label))
  if len(coords) < 2:
    return None
  return np.concatenate(coords), np.concatenate(labels)


def _patches_of(record, size, per_image, pixels, rng):
  """Random patches of one preprocessed record that hold both classes."""
  image = normalize.apply(crops.to_float(np.asarray(record["image"]),
                                         record["norm"].shape[-1]),
                          record["norm"])
  mask, fov = np.asarray(record["mask"]), np.asarray(record["fov"])
  height, width = fov.shape
  out = []
  for _ in range(50 * per_image):  # patches mostly outside the FOV are redrawn
    top = rng.integers(0, height - size + 1)
    left = rng.integers(0, width - size + 1)
    window = np.s_[top:top + size, left:left + size]
    sampled = _sample_pixels(mask[window], fov[window], pixels, rng)
    if sampled is not None:
      out.append((image[window], *sampled))
    if len(out) == per_image:
      return out
  raise errors.ConfigError(
      f"config.probe: image {data_sources.stem_of(record)} has too few "
      "vessel and background pixels inside its FOV for probe patches")


def build_probe_set(probe_cfg, data_dir, image_size, preprocess):
  """The fixed probe patches; None when `probe_cfg.dataset` is empty.

  Args:
    probe_cfg: `config.probe` (dataset, split, num_images, patches_per_image,
      pixels_per_patch, seed).
    data_dir: where prepared sets live.
    image_size: patch side (the pretraining crop size).
    preprocess: the pretraining run's `Preprocess` (same normalisation).
  """
  if not probe_cfg.dataset:
    return None
  if probe_cfg.num_images < 2:
    raise errors.ConfigError(
        f"config.probe.num_images={probe_cfg.num_images}: needs >= 2 (half "
        "fit the k-NN, half are labelled by it)")
  source = data_sources.open_split(data_dir, probe_cfg.dataset,
                                   probe_cfg.split)
  indices = pipeline.choose_labeled(source, probe_cfg.num_images,
                                    probe_cfg.seed)
  rng = np.random.default_rng(probe_cfg.seed)
  patches, coords, labels, fit = [], [], [], []
  for position, index in enumerate(indices):
    record = preprocess.record(source[index])
    for patch, xy, label in _patches_of(record, image_size,
                                        probe_cfg.patches_per_image,
                                        probe_cfg.pixels_per_patch, rng):
      patches.append(patch)
      coords.append(xy)
      labels.append(label)
      fit.append(position < len(indices) // 2)
  return ProbeSet(np.stack(patches).astype(np.float32),
                  np.stack(coords).astype(np.int32),
                  np.stack(labels).astype(np.int32), np.array(fit))


def hypercolumns(features, coords):
  """(N, P, sum of widths) features at `coords`, L2-normalised per level."""
  columns = []
  for level, fmap in enumerate(features):
    rows = coords[..., 0] // 2 ** level
    cols = coords[..., 1] // 2 ** level
    picked = jax.vmap(lambda f, r, c: f[r, c])(fmap, rows, cols)
    picked = picked.astype(jnp.float32)
    columns.append(picked / (jnp.linalg.norm(picked, axis=-1,
                                             keepdims=True) + 1e-6))
  return jnp.concatenate(columns, axis=-1)


def knn_balanced_accuracy(fit_x, fit_y, query_x, query_y, k):
  """Balanced accuracy of a cosine k-NN majority vote (binary labels)."""
  fit_x = fit_x / jnp.linalg.norm(fit_x, axis=-1, keepdims=True)
  query_x = query_x / jnp.linalg.norm(query_x, axis=-1, keepdims=True)
  _, nearest = jax.lax.top_k(query_x @ fit_x.T, k)
  votes = jnp.mean(fit_y[nearest].astype(jnp.float32), axis=-1)
  return _balanced_accuracy((votes > 0.5).astype(jnp.int32), query_y)


def _balanced_accuracy(predicted, labels):
  recalls = [jnp.sum((predicted == c) & (labels == c)) /
             jnp.maximum(jnp.sum(labels == c), 1) for c in (0, 1)]
  return (recalls[0] + recalls[1]) / 2


def ridge_balanced_accuracy(fit_x, fit_y, query_x, query_y, l2=1.0):
  """Balanced accuracy of a ridge-regression linear probe (binary labels).

  Features are standardised with the fit pixels' statistics, targets are
  -1/+1, and the closed-form solution needs no training loop, so the number
  depends on the features alone. `l2` is per fit pixel (scaled by their
  count), so it means the same at any probe size.
  """
  mean = jnp.mean(fit_x, axis=0)
  scale = jnp.std(fit_x, axis=0) + 1e-6
  fit_x = (fit_x - mean) / scale
  query_x = (query_x - mean) / scale
  target = 2.0 * fit_y.astype(jnp.float32) - 1.0
  gram = fit_x.T @ fit_x + l2 * fit_x.shape[0] * jnp.eye(fit_x.shape[1])
  weights = jnp.linalg.solve(gram, fit_x.T @ (target - jnp.mean(target)))
  scores = query_x @ weights + jnp.mean(target)
  return _balanced_accuracy((scores > 0).astype(jnp.int32), query_y)


PROBE_KINDS = ("linear", "knn")


def make_probe_fn(graphdef, probe_set, kind="linear", k=10):
  """Jitted (params, batch_stats) -> probe balanced accuracy.

  `kind` 'linear' is the ridge probe, 'knn' the k-NN vote over `k`
  neighbours. BatchNorm normalises with the probe patches' own batch
  statistics: the running averages are still near their initial values
  early in a run, and the copy the statistics update is thrown away.
  """
  if kind not in PROBE_KINDS:
    raise errors.ConfigError(
        f"config.probe.kind={kind!r}: expected one of {PROBE_KINDS}")
  fit = np.flatnonzero(probe_set.fit)
  query = np.flatnonzero(~probe_set.fit)
  patches = jnp.asarray(probe_set.patches)
  coords = jnp.asarray(probe_set.coords)
  labels = jnp.asarray(probe_set.labels)

  @jax.jit
  def probe(params, batch_stats):
    model = nnx.merge(graphdef, params, batch_stats)
    columns = hypercolumns(model.encoder(patches, train=True), coords)
    return classify(columns, labels, fit, query, kind, k)

  return probe


def classify(columns, labels, fit, query, kind, k):
  """Balanced accuracy of probe `kind` fitted on the pixels of patches `fit`
  and scored on those of patches `query` ((N, P, W) columns, (N, P) labels)."""
  width = columns.shape[-1]
  args = (columns[fit].reshape(-1, width), labels[fit].reshape(-1),
          columns[query].reshape(-1, width), labels[query].reshape(-1))
  if kind == "knn":
    return knn_balanced_accuracy(*args, k)
  return ridge_balanced_accuracy(*args)


class OnlineProbe:
  """Runs the probe every `every` steps (and at the last step)."""

  def __init__(self, probe_fn, every):
    self.probe_fn = probe_fn
    self.every = max(int(every), 1)

  def due(self, done, num_steps):
    return done % self.every == 0 or done == num_steps

  def __call__(self, state):
    accuracy = self.probe_fn(state["params"], state["batch_stats"])
    return {"probe_accuracy": float(jax.device_get(accuracy))}
