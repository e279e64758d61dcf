"""On-device image augmentation for contrastive pretraining and fine-tuning.

The work is split in two, so that the device only ever sees fixed-size
views (static shapes under `jax.jit`) and the per-pixel work runs on the
accelerator instead of the host's few CPU cores:

* the host (Grain, `medclr/data/crops.py`) does the random-resized crop to a
  fixed
  view size, using the `crop_area` / `crop_aspect` numbers of an `AugmentSpec`
  (or, with `config.data.crop_site='device'`, `medclr/augment/crops.py` does it
  on the device from fixed-size canvases);
* this module does everything else on device with dm-pix: flips, rotations,
  colour jitter, grayscale, Gaussian blur and solarisation.

One function, `augment_view`, augments a single image. It is batched with
`jax.vmap` over split keys (`augment_batch`) and run per device inside
`jax.shard_map` with the key folded with the device index (`sharded_augment`),
as in BYOL's `byol/utils/augmentations.py`. Vmapping dm-pix directly over a
batch-sharded array under an Explicit mesh fails (replicated keys against
batch-sharded images: "Mapped away dimension ... should be sharded the
same"), which is why the sharded entry points exist.

Every random decision is drawn per image and applied with `jnp.where` or
`lax.switch`, so shapes stay static and everything works under `jax.jit`.
An `AugmentSpec` is a frozen, hashable dataclass so it can be a static jit
argument; every branch that depends on it is resolved at trace time.

Presets (`PRESETS`, values and sources in `_PRESET_LIST` below) name the
augmentation sets the papers compare (docs/methods/README.md, augmentation
presets), and `get_spec` scales any of them continuously with one `strength`.
"""
import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import dm_pix
import jax
import jax.numpy as jnp

_BRIGHTNESS_MODES = ("multiply", "add")


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """What to do to one view. Hashable, so it can be a static jit argument.

  Attributes:
    name: preset name, for logs.
    crop_area: host random-resized-crop area range, relative to the image.
    crop_aspect: host random-resized-crop aspect-ratio (width / height) range.
    hflip_p: probability of a left-right flip.
    vflip_p: probability of an up-down flip.
    rotate_deg: maximum |angle| in degrees of a uniform random rotation
      (0 = none). Pixels rotated in from outside the image are 0.
    rot90: whether to rotate by a uniform random multiple of 90 degrees
      (needs square images).
    zoom: (lo, hi) range of a log-uniform random zoom about the centre,
      applied with the free rotation ((1, 1) = none; > 1 magnifies).
    jitter: brightness, contrast, saturation, hue strengths. Brightness and
      contrast factors are drawn from [max(0, 1 - s), 1 + s] (or brightness
      deltas from [-s, s] when `brightness_mode='add'`), saturation factors
      from [max(0, 1 - s), 1 + s], hue shifts from [-s, s] (in turns).
    jitter_p: probability of applying the colour jitter to an image.
    gray_p: probability of converting an RGB image to grayscale (3 channels
      kept).
    blur_p: probability of a Gaussian blur.
    blur_sigma: range of the blur's standard deviation, in pixels.
    solarize_p: probability of solarisation at `solarize_threshold`.
    jitter_random_order: apply the jitter ops in a random order per image
      (SimCLR, torchvision ColorJitter) instead of brightness, contrast,
      saturation, hue.
    brightness_mode: 'multiply' (SimCLR v2, torchvision) or 'add'
      (tf.image.random_brightness, used by Chaitanya et al.).
    solarize_threshold: pixels at or above this value are inverted.
    gamma: (lo, hi) range of a log-uniform random gamma (image ** gamma),
      applied with probability `gamma_p` after the colour jitter; exposure
      curves differ between cameras in this non-linear way.
    gamma_p: probability of the gamma change.
  """

  name: str
  crop_area: tuple[float, float] = (1.0, 1.0)
  crop_aspect: tuple[float, float] = (1.0, 1.0)
  hflip_p: float = 0.0
  vflip_p: float = 0.0
  rotate_deg: float = 0.0
  rot90: bool = False
  zoom: tuple[float, float] = (1.0, 1.0)
  jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
  jitter_p: float = 0.0
  gray_p: float = 0.0
  blur_p: float = 0.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  solarize_p: float = 0.0
  jitter_random_order: bool = True
  brightness_mode: str = "multiply"
  solarize_threshold: float = 0.5
  gamma: tuple[float, float] = (1.0, 1.0)
  gamma_p: float = 0.0

  def __post_init__(self):
    # Configs hand over lists; tuples keep the spec hashable for jit.
    for field in ("crop_area", "crop_aspect", "jitter", "blur_sigma", "zoom",
                  "gamma"):
      object.__setattr__(self, field,
                         tuple(float(v) for v in getattr(self, field)))
    _validate_spec(self)


def _validate_spec(spec: AugmentSpec) -> None:
  """Raises ValueError naming the first field of `spec` that is out of range."""
  where = f"AugmentSpec {spec.name!r}"
  for field in ("hflip_p", "vflip_p", "jitter_p", "gray_p", "blur_p",
                "solarize_p", "gamma_p"):
    value = getattr(spec, field)
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"{where}: {field} must be a probability in [0, 1], "
                       f"got {value}")
  _check_range(where, "crop_area", spec.crop_area, low=0.0, high=1.0)
  _check_range(where, "crop_aspect", spec.crop_aspect, low=0.0)
  _check_range(where, "blur_sigma", spec.blur_sigma, low=0.0)
  _check_range(where, "zoom", spec.zoom, low=0.0)
  _check_range(where, "gamma", spec.gamma, low=0.0)
  if len(spec.jitter) != 4 or min(spec.jitter) < 0:
    raise ValueError(f"{where}: jitter must be 4 non-negative strengths "
                     f"(brightness, contrast, saturation, hue), got "
                     f"{spec.jitter}")
  if spec.jitter[3] > 0.5:
    raise ValueError(f"{where}: hue strength jitter[3] must be <= 0.5 (a "
                     f"half turn of the hue circle), got {spec.jitter[3]}")
  if not 0.0 <= spec.rotate_deg <= 180.0:
    raise ValueError(f"{where}: rotate_deg must be in [0, 180], got "
                     f"{spec.rotate_deg}")
  if spec.brightness_mode not in _BRIGHTNESS_MODES:
    raise ValueError(f"{where}: brightness_mode must be one of "
                     f"{_BRIGHTNESS_MODES}, got {spec.brightness_mode!r}")


def _check_range(where: str, field: str, value: tuple[float, ...],
                 low: float, high: float = math.inf) -> None:
  """Checks that `value` is a (lo, hi) pair with low < lo <= hi <= high."""
  if len(value) != 2 or not low < value[0] <= value[1] <= high:
    raise ValueError(f"{where}: {field} must be (lo, hi) with "
                     f"{low} < lo <= hi <= {high}, got {value}")


# Each preset says where its numbers come from; docs/methods/README.md
# (augmentation presets) collects them with the official code's values.
# Brightness and contrast +-10%, p 0.8: the fine-tuning presets' jitter.
_MILD_JITTER = dict(jitter=(0.1, 0.1, 0.0, 0.0), jitter_p=0.8)

_PRESET_LIST = (
    # Identity on device; the host crop takes the whole image.
    AugmentSpec(name="none"),
    # google-research/simclr tf2/data_util.py (read for this module):
    # crop_and_resize area_range (0.08, 1.0), aspect (3/4, 4/3);
    # random_flip_left_right; color_jitter strength 1.0 -> brightness 0.8,
    # contrast 0.8, saturation 0.8, hue 0.2, random order (color_jitter_rand),
    # applied with p 0.8; to_grayscale p 0.2; batch_random_blur p 0.5 with
    # sigma U(0.1, 2.0) and kernel height // 10. Brightness is the 'simclrv2'
    # multiplicative version.
    AugmentSpec(
        name="simclr_strong",
        crop_area=(0.08, 1.0),
        crop_aspect=(3 / 4, 4 / 3),
        hflip_p=0.5,
        jitter=(0.8, 0.8, 0.8, 0.2),
        jitter_p=0.8,
        gray_p=0.2,
        blur_p=0.5,
        blur_sigma=(0.1, 2.0),
    ),
    # facebookresearch/moco main_moco.py aug+ (docs/methods/mocov2.md):
    # RandomResizedCrop scale (0.2, 1) with torchvision's default ratio
    # (3/4, 4/3); ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8; RandomGrayscale 0.2;
    # GaussianBlur sigma [0.1, 2.0] p 0.5; hflip. Approximations: MoCo blurs
    # with PIL (no kernel size), here the kernel is H // 10 like SimCLR; and
    # torchvision's contrast/saturation blend with the grayscale image, here
    # they use the dm-pix (tf.image) definitions.
    AugmentSpec(
        name="mocov2",
        crop_area=(0.2, 1.0),
        crop_aspect=(3 / 4, 4 / 3),
        hflip_p=0.5,
        jitter=(0.4, 0.4, 0.4, 0.1),
        jitter_p=0.8,
        gray_p=0.2,
        blur_p=0.5,
        blur_sigma=(0.1, 2.0),
    ),
    # Idris et al. 2022 "basic" set (docs/methods/README.md): resize,
    # rotate, horizontal flip; no intensity ops. "Resize" = the host resizes
    # the whole image (area (1, 1)). The paper's rotation range is
    # UNVERIFIED: +-15 degrees is our choice (a common torchvision
    # RandomRotation value and nnU-Net's 2D range for elongated patches).
    # The flip probability 0.5 is the torchvision default.
    AugmentSpec(
        name="basic_medical",
        hflip_p=0.5,
        rotate_deg=15.0,
    ),
    # Lossless geometry for fine-tuning: the 8 symmetries of the square
    # (flips on both axes, 90-degree turns) move pixels without resampling,
    # so one-pixel vessels stay as sharp as in test images. On DRIVE k=2 it
    # scored below basic_medical (benchmarks/results/ablation.md).
    AugmentSpec(
        name="geometric",
        hflip_p=0.5,
        vflip_p=0.5,
        rot90=True,
    ),
    # The same plus mild intensity jitter (brightness and contrast +-10%,
    # p 0.8), for domain shift in exposure between cameras.
    AugmentSpec(
        name="geometric_jitter",
        hflip_p=0.5,
        vflip_p=0.5,
        rot90=True,
        **_MILD_JITTER,
    ),
    # basic_medical plus mild brightness/contrast jitter (+-10%, p 0.8): with
    # one or two labelled images, exposure differences between images are
    # otherwise never seen in training.
    AugmentSpec(
        name="basic_medical_jitter",
        hflip_p=0.5,
        rotate_deg=15.0,
        **_MILD_JITTER,
    ),
    # Lossless geometry plus basic_medical's +-15 degree rotation: the
    # symmetries cost nothing, and flip TTA shows the model vertical flips
    # at test time anyway.
    AugmentSpec(
        name="geometric_rotate",
        hflip_p=0.5,
        vflip_p=0.5,
        rot90=True,
        rotate_deg=15.0,
    ),
    # basic_medical plus what differs between fundus cameras beyond scale:
    # colour balance (saturation +-20%, hue +-0.02 turn) and exposure
    # (brightness and contrast +-10%), p 0.8, and a gamma in [0.7, 1.4]
    # (log-uniform), p 0.5. Our choice of values, measured across cameras in
    # benchmarks/results/cross_camera.md.
    AugmentSpec(
        name="basic_medical_color",
        hflip_p=0.5,
        rotate_deg=15.0,
        jitter=(0.1, 0.1, 0.2, 0.02),
        jitter_p=0.8,
        gamma=(0.7, 1.4),
        gamma_p=0.5,
    ),
    # basic_medical plus a random zoom in [0.8, 1.25] (log-uniform): vessel
    # widths then vary the way they do between cameras and patients.
    AugmentSpec(
        name="basic_medical_zoom",
        hflip_p=0.5,
        rotate_deg=15.0,
        zoom=(0.8, 1.25),
    ),
    # basic_medical's geometry on host crops of 2-6% of a ~570 px fundus
    # image (80-140 px resized to 96): pretraining views at about the vessel
    # scale of native-resolution fine-tuning patches, where the whole-image
    # views of basic_medical shrink vessels ~6x. An experiment
    # (benchmarks/results/pretrain_recipes.jsonl).
    AugmentSpec(
        name="basic_medical_native",
        crop_area=(0.02, 0.06),
        crop_aspect=(3 / 4, 4 / 3),
        hflip_p=0.5,
        rotate_deg=15.0,
    ),
    # krishnabits001/domain_specific_cl global stage
    # (docs/methods/volume_supcon.md, docs/methods/README.md): a
    # 100x100 crop of a 192x192 slice resized back, i.e. (100/192)^2 = 0.27 of
    # the area, square; then tf.image.random_brightness(max_delta=0.3)
    # (additive) and random_contrast(0.7, 1.3), in that order, always applied.
    # Deviations: the original draws one factor per batch, here per image;
    # it clips to [0, 1.5] once at the end, here to [0, 1] after each op like
    # SimCLR, because medclr images live in [0, 1].
    AugmentSpec(
        name="chaitanya_global",
        crop_area=(0.27, 0.27),
        crop_aspect=(1.0, 1.0),
        jitter=(0.3, 0.3, 0.0, 0.0),
        jitter_p=1.0,
        jitter_random_order=False,
        brightness_mode="add",
    ),
    # Same source, local stage: intensity only so that pixel positions of the
    # two views correspond (docs/methods/volume_supcon.md).
    AugmentSpec(
        name="chaitanya_local",
        jitter=(0.3, 0.3, 0.0, 0.0),
        jitter_p=1.0,
        jitter_random_order=False,
        brightness_mode="add",
    ),
)

PRESETS: dict[str, AugmentSpec] = {spec.name: spec for spec in _PRESET_LIST}


def get_spec(preset: str, strength: float = 1.0) -> AugmentSpec:
  """Returns the named preset scaled by `strength`.

  `strength` 0 is no augmentation, 1 is the preset as published, values in
  between interpolate and values above 1 extrapolate magnitudes:

  * jitter strengths are multiplied by `strength`, as SimCLR's
    `color_jitter_strength` does (hue capped at 0.5);
  * the crop's relative area range (lo, hi) becomes
    1 - strength * (1 - lo|hi), clipped to [0.01, 1];
  * the aspect-ratio range (lo, hi) becomes (lo**strength, hi**strength),
    i.e. it is scaled in log space, so strength 0 gives square crops;
  * `rotate_deg` is multiplied by `strength` (capped at 180), and `rot90` is
    off at strength 0;
  * the gamma range (lo, hi) becomes (lo**strength, hi**strength);
  * every probability p becomes p * min(strength, 1).

  Args:
    preset: a key of `PRESETS` (config.augment.preset).
    strength: non-negative scale (config.augment.strength).

  Returns:
    The scaled `AugmentSpec`; its name is the preset's.

  Raises:
    ValueError: unknown preset, or negative / non-finite strength.
  """
  if preset not in PRESETS:
    raise ValueError(f"unknown augment preset {preset!r} "
                     f"(config.augment.preset); known presets: "
                     f"{sorted(PRESETS)}")
  if not (math.isfinite(strength) and strength >= 0):
    raise ValueError(f"augment strength (config.augment.strength) must be a "
                     f"finite number >= 0, got {strength}")
  base = PRESETS[preset]
  if strength == 1.0:
    return base
  return _scaled(base, strength)


def _scaled(base: AugmentSpec, strength: float) -> AugmentSpec:
  """`base` with every magnitude and probability scaled (see get_spec)."""
  p_scale = min(strength, 1.0)

  def scale_area(area: float) -> float:
    return min(max(1.0 - strength * (1.0 - area), 0.01), 1.0)

  def scale_p(p: float) -> float:
    return p * p_scale

  return dataclasses.replace(
      base,
      crop_area=tuple(scale_area(a) for a in base.crop_area),
      crop_aspect=tuple(a**strength for a in base.crop_aspect),
      hflip_p=scale_p(base.hflip_p),
      vflip_p=scale_p(base.vflip_p),
      rotate_deg=min(base.rotate_deg * strength, 180.0),
      rot90=base.rot90 and strength > 0,
      jitter=scaled_jitter(base.jitter, strength),
      jitter_p=scale_p(base.jitter_p),
      gray_p=scale_p(base.gray_p),
      blur_p=scale_p(base.blur_p),
      solarize_p=scale_p(base.solarize_p),
      gamma=tuple(g**strength for g in base.gamma),
      gamma_p=scale_p(base.gamma_p),
  )


def scaled_jitter(jitter, strength):
  """Jitter strengths times `strength`, hue capped at 0.5 (SimCLR's rule)."""
  brightness, contrast, saturation, hue = (s * strength for s in jitter)
  return (brightness, contrast, saturation, min(hue, 0.5))


def with_intensity(base, strength, name, *, jitter, jitter_p, gray_p, blur_p,
                   solarize_p, brightness_mode):
  """`base` with its intensity ops replaced, scaled by `get_spec`'s rules.

  For methods whose views differ in intensity only (BYOL's asymmetric pair,
  DINO's global and local crops): `jitter` (brightness, contrast,
  saturation, hue) and the probabilities are their values at strength 1;
  `brightness_mode` is 'multiply' (torchvision) or 'add' (tf.image). Returns
  a new `AugmentSpec` named `name`.
  """
  p_scale = min(strength, 1.0)
  return dataclasses.replace(
      base, name=name, jitter=scaled_jitter(jitter, strength),
      jitter_p=jitter_p * p_scale, gray_p=gray_p * p_scale,
      blur_p=blur_p * p_scale, solarize_p=solarize_p * p_scale,
      brightness_mode=brightness_mode)


# ---------------------------------------------------------------------------
# Single-image ops.
# ---------------------------------------------------------------------------


def _coin(key: jax.Array, p: float) -> jax.Array:
  """A traced boolean that is True with probability p."""
  return jax.random.uniform(key) < p


def _random_geometry(key: jax.Array, arrays: Sequence[jax.Array],
                     orders: Sequence[int],
                     spec: AugmentSpec) -> list[jax.Array]:
  """Applies the same random flips and rotations to HWC arrays.

  Args:
    key: PRNG key.
    arrays: (H, W, C) float arrays sharing H and W (image, mask, weight).
    orders: interpolation order for each array's free rotation: 1 bilinear
      for images, 0 nearest for masks and weights so labels stay labels.
    spec: the augmentation spec.

  Returns:
    The transformed arrays, same shapes.
  """
  k_hflip, k_vflip, k_rot90, k_rotate = jax.random.split(key, 4)
  arrays = list(arrays)
  if spec.hflip_p > 0:
    flip = _coin(k_hflip, spec.hflip_p)
    arrays = [jnp.where(flip, dm_pix.flip_left_right(a), a) for a in arrays]
  if spec.vflip_p > 0:
    flip = _coin(k_vflip, spec.vflip_p)
    arrays = [jnp.where(flip, dm_pix.flip_up_down(a), a) for a in arrays]
  if spec.rot90:
    height, width = arrays[0].shape[:2]
    if height != width:
      raise ValueError(f"AugmentSpec {spec.name!r}: rot90 needs square "
                       f"images to keep shapes static, got {height}x{width}")
    turns = jax.random.randint(k_rot90, (), 0, 4)
    # dm_pix.rot90 needs a static k: switch over the four possibilities.
    branches = [functools.partial(dm_pix.rot90, k=k) for k in range(4)]
    arrays = [jax.lax.switch(turns, branches, a) for a in arrays]
  if spec.rotate_deg > 0 or spec.zoom != (1.0, 1.0):
    # The angle keeps its key (runs without zoom draw the same angles).
    k_zoom = jax.random.fold_in(k_rotate, 1)
    max_angle = math.radians(spec.rotate_deg)
    angle = jax.random.uniform(k_rotate, minval=-max_angle, maxval=max_angle)
    zoom = jnp.exp(jax.random.uniform(k_zoom, minval=math.log(spec.zoom[0]),
                                      maxval=math.log(spec.zoom[1])))
    # Constant 0 outside the image: black background for images, and
    # weight 0 so rotated-in corners are ignored by the loss.
    arrays = [_rotate_zoom(a, angle, zoom, order)
              for a, order in zip(arrays, orders)]
    if 0 in orders:
      # Bilinear 'constant' in dm-pix treats source coordinates outside
      # [0, size - 1] as outside, nearest (map_coordinates) only beyond
      # [-0.5, size - 0.5]; zero the nearest-rotated arrays on that
      # half-pixel band so weight 1 never marks a black padded image pixel.
      ones = jnp.ones(arrays[0].shape[:2] + (1,), jnp.float32)
      inside = _rotate_zoom(ones, angle, zoom, 1) > 0.5
      arrays = [a if order else jnp.where(inside, a, 0.0)
                for a, order in zip(arrays, orders)]
  return arrays


def _rotate_zoom(image: jax.Array, angle: jax.Array, zoom: jax.Array,
                 order: int) -> jax.Array:
  """dm_pix.rotate's centred rotation, magnified `zoom` times; 0 outside.

  The matrix maps output to input coordinates (dm_pix.affine_transform), so
  magnifying divides the spatial rows by `zoom`; channels map to themselves.
  """
  c, s = jnp.cos(angle), jnp.sin(angle)
  matrix = jnp.array([[c / zoom, s / zoom, 0.0], [-s / zoom, c / zoom, 0.0],
                      [0.0, 0.0, 1.0]])
  centre = (jnp.asarray(image.shape, jnp.float32) - 1.0) / 2.0
  return dm_pix.affine_transform(image, matrix, offset=centre - matrix @ centre,
                                 order=order, mode="constant", cval=0.0)


def _multiply_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  # Our own op: dm_pix.adjust_brightness is additive, SimCLR v2 ('simclrv2'
  # in random_brightness) and torchvision multiply.
  return image * factor


def _jitter_ops(key: jax.Array, channels: int,
                spec: AugmentSpec) -> list[Callable[[jax.Array], jax.Array]]:
  """The enabled colour-jitter ops, each with its random factor drawn.

  Saturation and hue are skipped for 1-channel images, where they are
  undefined. Factors are drawn independently of the order they are applied
  in, so the same key gives the same factors whatever the order.
  """
  brightness, contrast, saturation, hue = spec.jitter
  k_b, k_c, k_s, k_h = jax.random.split(key, 4)
  ops = []
  if brightness > 0:
    if spec.brightness_mode == "multiply":
      factor = jax.random.uniform(
          k_b, minval=max(1.0 - brightness, 0.0), maxval=1.0 + brightness)
      ops.append(functools.partial(_multiply_brightness, factor=factor))
    else:
      delta = jax.random.uniform(k_b, minval=-brightness, maxval=brightness)
      ops.append(functools.partial(dm_pix.adjust_brightness, delta=delta))
  if contrast > 0:
    factor = jax.random.uniform(
        k_c, minval=max(1.0 - contrast, 0.0), maxval=1.0 + contrast)
    ops.append(functools.partial(dm_pix.adjust_contrast, factor=factor))
  if saturation > 0 and channels == 3:
    factor = jax.random.uniform(
        k_s, minval=max(1.0 - saturation, 0.0), maxval=1.0 + saturation)
    ops.append(functools.partial(dm_pix.adjust_saturation, factor=factor))
  if hue > 0 and channels == 3:
    delta = jax.random.uniform(k_h, minval=-hue, maxval=hue)
    ops.append(functools.partial(dm_pix.adjust_hue, delta=delta))
  return ops


def _has_jitter(spec: AugmentSpec, channels: int) -> bool:
  """Whether any jitter op of `spec` applies to images with `channels`."""
  brightness, contrast, saturation, hue = spec.jitter
  return bool(brightness or contrast or (channels == 3 and (saturation or hue)))


def _color_jitter(key: jax.Array, image: jax.Array,
                  spec: AugmentSpec) -> jax.Array:
  """SimCLR's color_jitter: each enabled op once, clipped after each op."""
  k_ops, k_order = jax.random.split(key)
  ops = _jitter_ops(k_ops, image.shape[-1], spec)
  if spec.jitter_random_order and len(ops) > 1:
    order = jax.random.permutation(k_order, len(ops))

    def apply_step(step, image):
      return jnp.clip(jax.lax.switch(order[step], ops, image), 0.0, 1.0)

    # A loop traces the ops once instead of once per step: 4x smaller graph.
    image = jax.lax.fori_loop(0, len(ops), apply_step, image)
  else:
    for op in ops:
      image = jnp.clip(op(image), 0.0, 1.0)
  return image


def blur_kernel_size(height: int) -> int:
  """Gaussian-blur kernel size for images of this height.

  SimCLR uses height // 10 (tf2/data_util.py random_blur); its
  gaussian_blur, like dm_pix.gaussian_blur, rounds an even size up to the
  next odd one. The minimum of 3 keeps the blur visible on small images.
  """
  size = max(height // 10, 3)
  return size if size % 2 else size + 1


def _random_intensity(key: jax.Array, image: jax.Array,
                      spec: AugmentSpec) -> jax.Array:
  """Colour jitter, grayscale, blur, solarize (SimCLR then BYOL order)."""
  k_jitter_on, k_jitter, k_gray, k_blur_on, k_sigma, k_solarize = (
      jax.random.split(key, 6))
  rgb = image.shape[-1] == 3
  if spec.jitter_p > 0 and _has_jitter(spec, image.shape[-1]):
    jittered = _color_jitter(k_jitter, image, spec)
    image = jnp.where(_coin(k_jitter_on, spec.jitter_p), jittered, image)
  if spec.gamma_p > 0 and spec.gamma != (1.0, 1.0):
    image = _random_gamma(jax.random.fold_in(key, 7), image, spec)
  if spec.gray_p > 0 and rgb:
    gray = dm_pix.rgb_to_grayscale(image, keep_dims=True)
    image = jnp.where(_coin(k_gray, spec.gray_p), gray, image)
  if spec.blur_p > 0:
    low, high = spec.blur_sigma
    sigma = jax.random.uniform(k_sigma, minval=low, maxval=high)
    blurred = dm_pix.gaussian_blur(
        image, sigma, kernel_size=blur_kernel_size(image.shape[0]))
    image = jnp.where(_coin(k_blur_on, spec.blur_p), blurred, image)
  if spec.solarize_p > 0:
    solarized = dm_pix.solarize(image, spec.solarize_threshold)
    image = jnp.where(_coin(k_solarize, spec.solarize_p), solarized, image)
  return image


def _random_gamma(key: jax.Array, image: jax.Array,
                  spec: AugmentSpec) -> jax.Array:
  """image ** gamma, gamma log-uniform in `spec.gamma`, with `gamma_p`."""
  k_on, k_gamma = jax.random.split(key)
  low, high = spec.gamma
  gamma = jnp.exp(jax.random.uniform(k_gamma, minval=math.log(low),
                                     maxval=math.log(high)))
  # The floor keeps the gradient-free power finite at 0 for gamma < 1.
  changed = dm_pix.adjust_gamma(jnp.maximum(image, 1e-6), gamma)
  return jnp.where(_coin(k_on, spec.gamma_p), changed, image)


def _check_image(image: jax.Array, what: str = "image") -> None:
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"{what} must be (H, W, C) with C in (1, 3), got shape "
                     f"{image.shape}")


def _finish(image: jax.Array) -> jax.Array:
  # Views are inputs, never something to differentiate through (as BYOL).
  return jax.lax.stop_gradient(jnp.clip(image, 0.0, 1.0))


def augment_view(key: jax.Array, image: jax.Array,
                 spec: AugmentSpec) -> jax.Array:
  """Augments one image on device (everything but the host crop).

  Order: flips, rot90, rotation, then colour jitter, grayscale, blur,
  solarize.

  Args:
    key: PRNG key.
    image: (H, W, C) float32 in [0, 1], C in {1, 3}.
    spec: the augmentation spec (static).

  Returns:
    The augmented image, same shape and dtype, in [0, 1], gradient-stopped.
  """
  _check_image(image)
  k_geometry, k_intensity = jax.random.split(key)
  (image,) = _random_geometry(k_geometry, [image], orders=(1,), spec=spec)
  image = _random_intensity(k_intensity, image, spec)
  return _finish(image)


def augment_segmentation(
    key: jax.Array, image: jax.Array, mask: jax.Array, weight: jax.Array,
    spec: AugmentSpec) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Augments one (image, mask, weight) example with the same geometry.

  The image is rotated bilinearly, mask and weight with nearest neighbour;
  pixels rotated in from outside get weight 0. Intensity ops touch only the
  image. With the same key and spec, the image equals `augment_view`'s.

  Args:
    key: PRNG key.
    image: (H, W, C) float32 in [0, 1], C in {1, 3}.
    mask: (H, W) or (H, W, 1) integer class indices.
    weight: (H, W) or (H, W, 1) float loss weight / field of view.
    spec: the augmentation spec (static).

  Returns:
    (image, mask, weight) with the input shapes and dtypes.
  """
  _check_image(image)
  for name, array in (("mask", mask), ("weight", weight)):
    if array.shape not in (image.shape[:2], image.shape[:2] + (1,)):
      raise ValueError(f"{name} must be (H, W) or (H, W, 1) matching image "
                       f"{image.shape}, got {array.shape}")
  k_geometry, k_intensity = jax.random.split(key)
  as_hwc = lambda a: a.reshape(image.shape[:2] + (1,)).astype(jnp.float32)
  image_out, mask_out, weight_out = _random_geometry(
      k_geometry, [image, as_hwc(mask), as_hwc(weight)], orders=(1, 0, 0),
      spec=spec)
  image_out = _finish(_random_intensity(k_intensity, image_out, spec))
  mask_out = jnp.round(mask_out).astype(mask.dtype).reshape(mask.shape)
  weight_out = weight_out.astype(weight.dtype).reshape(weight.shape)
  return image_out, mask_out, weight_out


# ---------------------------------------------------------------------------
# Batched and sharded entry points.
# ---------------------------------------------------------------------------


def example_keys(key: jax.Array, batch: int, offset=0) -> jax.Array:
  """One key per example: fold_in(key, global example index).

  Keying by the example's index in the global batch (not by device) makes
  the augmentation independent of how many devices share the batch, so a run
  on 1 device and on 8 draws exactly the same views.
  """
  index = offset + jnp.arange(batch)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)


def augment_batch(key: jax.Array, images: jax.Array, spec: AugmentSpec,
                  offset=0) -> jax.Array:
  """`augment_view` on each image of a (B, H, W, C) batch.

  Image i uses `fold_in(key, offset + i)`; `offset` is the index of the first
  image in the global batch (see `example_keys`).
  """
  if images.ndim != 4:
    raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
  keys = example_keys(key, images.shape[0], offset)
  return jax.vmap(functools.partial(augment_view, spec=spec))(keys, images)


def augment_segmentation_batch(
    key: jax.Array, images: jax.Array, masks: jax.Array, weights: jax.Array,
    spec: AugmentSpec, offset=0) -> tuple[jax.Array, jax.Array, jax.Array]:
  """`augment_segmentation` on each example of a batch, keyed as above."""
  if images.ndim != 4:
    raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
  keys = example_keys(key, images.shape[0], offset)
  return jax.vmap(functools.partial(augment_segmentation, spec=spec))(
      keys, images, masks, weights)


def per_device(batch_fn: Callable[..., jax.Array | tuple[jax.Array, ...]],
                key: jax.Array, arrays: Sequence[jax.Array],
                axis_name: str):
  """Runs batch_fn(key, *local_arrays, offset=...) on each shard.

  `offset` is the global index of the shard's first example, so every
  example gets the same key whatever the number of devices; without an
  ambient mesh the whole batch is one shard at offset 0.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return batch_fn(key, *arrays, offset=0)
  if axis_name not in mesh.axis_names:
    raise ValueError(f"axis_name {axis_name!r} is not an axis of the ambient "
                     f"mesh {mesh.axis_names}")
  num_shards = mesh.shape[axis_name]
  batch = arrays[0].shape[0]
  if batch % num_shards:
    raise ValueError(f"batch size {batch} must be divisible by the "
                     f"{num_shards} devices on mesh axis {axis_name!r}")

  def local(key, *local_arrays):
    offset = jax.lax.axis_index(axis_name) * local_arrays[0].shape[0]
    return batch_fn(key, *local_arrays, offset=offset)

  data = jax.P(axis_name)
  axis_type = dict(zip(mesh.axis_names, mesh.axis_types))[axis_name]
  if axis_type == jax.sharding.AxisType.Explicit:
    # Explicit axes: shard_map requires the inputs' sharding types to equal
    # in_specs (Auto axes are resharded by shard_map itself). A no-op when
    # the caller already sharded the batch.
    key = jax.reshard(key, jax.P())
    arrays = [jax.reshard(a, data) for a in arrays]
  in_specs = (jax.P(),) + (data,) * len(arrays)
  out_specs = data if len(arrays) == 1 else (data,) * len(arrays)
  return jax.shard_map(local, in_specs=in_specs, out_specs=out_specs)(
      key, *arrays)


def sharded_augment(key: jax.Array, images: jax.Array, spec: AugmentSpec,
                    axis_name: str = "data") -> jax.Array:
  """Augments a batch sharded over `axis_name` of the ambient mesh.

  Each device augments its own images inside `jax.shard_map`, so it works
  under an Explicit mesh (where vmapping dm-pix over a sharded batch fails)
  and never moves images across devices. Keys follow the global example
  index, so the result equals `augment_batch(key, images)` on one device.

  Args:
    key: PRNG key, replicated.
    images: (B, H, W, C) float32 in [0, 1]; B divisible by the axis size.
    spec: the augmentation spec (static).
    axis_name: mesh axis the batch is split over.

  Returns:
    Augmented images, sharded like P(axis_name).
  """
  return per_device(functools.partial(augment_batch, spec=spec), key,
                     [images], axis_name)


def two_views(key: jax.Array, view1: jax.Array, view2: jax.Array,
              spec: AugmentSpec,
              axis_name: str = "data") -> tuple[jax.Array, jax.Array]:
  """Augments the two host crops of a batch with independent keys."""
  key1, key2 = jax.random.split(key)
  return (sharded_augment(key1, view1, spec, axis_name),
          sharded_augment(key2, view2, spec, axis_name))


def sharded_augment_segmentation(
    key: jax.Array, images: jax.Array, masks: jax.Array, weights: jax.Array,
    spec: AugmentSpec,
    axis_name: str = "data") -> tuple[jax.Array, jax.Array, jax.Array]:
  """`augment_segmentation` over a batch sharded like `sharded_augment`."""
  return per_device(
      functools.partial(augment_segmentation_batch, spec=spec), key,
      [images, masks, weights], axis_name)
