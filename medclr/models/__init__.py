"""Flax NNX models: one encoder shared by pretraining and the U-Net.

`make_unet` and `make_contrastive` build models from `config.model`; both hold
the same `Encoder` under `encoder`, so pretrained encoder weights transfer by
parameter path. Flax is imported only when a model is built, so reading
`MODEL_PRESETS` from a config file stays cheap. May import: medclr
infrastructure only.
"""
import numbers
from typing import Any

from medclr import errors

# Named architectures. `unet2d-32` is the canonical benchmark model of
# docs/protocol.md section 2; the others are smaller variants for CPU runs
# and tests.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    'unet2d-32': dict(widths=(32, 64, 128, 256, 512), norm='batch'),
    'unet2d-16': dict(widths=(16, 32, 64, 128, 256), norm='batch'),
    'small': dict(widths=(16, 32, 64, 128), norm='batch'),
    'tiny': dict(widths=(8, 16, 32), norm='batch'),
}

_DTYPES = ('float32', 'bfloat16')


def _read(cfg: Any, key: str, default: Any = None, *, section: str) -> Any:
  """Reads `key` from a ConfigDict or mapping; raises naming it if absent."""
  value = cfg.get(key, default)
  if value is None:
    raise errors.ConfigError(
        f'{section} config is missing required field {key!r}')
  return value


def model_kwargs(model_cfg: Any) -> dict[str, Any]:
  """Encoder arguments shared by every model, read from `config.model`.

  Args:
    model_cfg: ConfigDict or mapping with `widths` (tuple/list of ints),
      `norm` ('batch' | 'group') and `in_channels`; optional `dtype`
      ('float32' default, or 'bfloat16': bfloat16 compute, float32 params).

  Returns:
    dict(in_channels=..., widths=..., norm=..., dtype=...) for the model
    constructors.

  Raises:
    ValueError: a field is missing or has the wrong type/value.
  """
  widths = _read(model_cfg, 'widths', section='model')
  if not isinstance(widths, (tuple, list)) or not widths or not all(
      isinstance(w, numbers.Integral) and w > 0 for w in widths):
    raise ValueError(
        'model config field widths must be a non-empty tuple/list of positive '
        f'ints, got {widths!r}')
  norm = _read(model_cfg, 'norm', section='model')
  if norm not in ('batch', 'group'):
    raise ValueError(
        f"model config field norm must be 'batch' or 'group', got {norm!r}")
  in_channels = int(_read(model_cfg, 'in_channels', section='model'))
  dtype_name = _read(model_cfg, 'dtype', 'float32', section='model')
  if dtype_name not in _DTYPES:
    raise ValueError(
        f'model config field dtype must be one of {_DTYPES}, got '
        f'{dtype_name!r}')
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  return dict(in_channels=in_channels, widths=tuple(int(w) for w in widths),
              norm=norm, dtype=jnp.dtype(dtype_name))


def make_unet(model_cfg: Any, rngs: Any):
  """Builds `unet.UNet` from `config.model` (adds `num_classes`, default 1).

  Args:
    model_cfg: see `model_kwargs`; may also hold `num_classes` and
      `representation_dim` (semi-supervised training's pixel embeddings).
    rngs: an `nnx.Rngs`.

  Returns:
    The U-Net.
  """
  from medclr.models import unet  # pylint: disable=g-import-not-at-top

  num_classes = int(_read(model_cfg, 'num_classes', 1, section='model'))
  representation_dim = int(
      _read(model_cfg, 'representation_dim', 0, section='model'))
  return unet.UNet(**model_kwargs(model_cfg), num_classes=num_classes,
                   representation_dim=representation_dim, rngs=rngs)


def make_contrastive(model_cfg: Any, head_cfg: Any, rngs: Any):
  """Builds `heads.ContrastiveModel` from `config.model` and the head config.

  Args:
    model_cfg: see `model_kwargs`.
    head_cfg: ConfigDict or mapping with `hidden_dim` and `out_dim`.
    rngs: an `nnx.Rngs`.

  Returns:
    The contrastive model (encoder + projection head).
  """
  from medclr.models import heads  # pylint: disable=g-import-not-at-top

  return heads.ContrastiveModel(
      **model_kwargs(model_cfg),
      hidden_dim=int(_read(head_cfg, 'hidden_dim', section='head')),
      out_dim=int(_read(head_cfg, 'out_dim', section='head')),
      rngs=rngs)


def split_model(model):
  """(graphdef, params, batch_stats) of an NNX model, the last two pure dicts."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def make_predict_fn(graphdef):
  """predict(params, batch_stats, images) -> logits, in eval mode."""
  from flax import nnx  # pylint: disable=g-import-not-at-top

  def predict(params, batch_stats, images):
    model = nnx.merge(graphdef, params, batch_stats)
    return model(images, train=False)

  return predict
