"""DINO's multi-crop presets: crop scales and colour-jitter strengths.

A plain table (no JAX, no data) so configs/pretrain_dino.py can fill
`config.multicrop` from it without importing the method;
medclr/methods/dino.py checks `config.multicrop` against it
(docs/methods/dino.md).
"""
import dataclasses


@dataclasses.dataclass(frozen=True)
class CropPreset:
  """Crop scales and colour-jitter strengths of a multi-crop preset."""

  global_scale: tuple[float, float]
  local_scale: tuple[float, float]
  jitter: tuple[float, float, float, float]


# `config.multicrop.preset` values ('custom' reads the config fields instead).
CROP_PRESETS = {
    # facebookresearch/dino main_dino.py defaults: --global_crops_scale
    # (0.4, 1), --local_crops_scale (0.05, 0.4), ColorJitter(0.4, 0.4, 0.2,
    # 0.1).
    "dino_default": CropPreset((0.4, 1.0), (0.05, 0.4), (0.4, 0.4, 0.2, 0.1)),
    # Cheng et al. 2025 (MIDL; ziijiecheng/Enhance-contrastive-SSL-for-
    # Retinal-Imaging) "strong" and "weak": the repository ships checkpoints
    # and fine-tuning code only, and neither its README, DINO.md nor the
    # paper pages we could read give the numbers (UNVERIFIED; see
    # docs/methods/dino.md). "strong" is read as DINO's defaults.
    "strong": CropPreset((0.4, 1.0), (0.05, 0.4), (0.4, 0.4, 0.2, 0.1)),
    # "weak" is OUR definition, not theirs: narrowed crop scales (global
    # (0.7, 1), local (0.3, 0.6)) and colour jitter at half DINO's strength;
    # probabilities, blur and solarisation as DINO.
    "weak": CropPreset((0.7, 1.0), (0.3, 0.6), (0.2, 0.2, 0.1, 0.05)),
}
