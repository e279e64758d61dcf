"""How a prepared 2D record stores its image: encoded bytes, decoded on read.

Records of version 2 (`tfds_builder.VERSION`) hold `image_bytes` and
`image_format` ('jpeg' or 'png') instead of the decoded pixels, which made
the 58 MB of pool JPEGs 564 MB of records. `encode` picks the bytes:
  * a JPEG source file is kept byte for byte: re-encoding it would lose
    detail (lossy again) or, losslessly, take several times the space;
  * a PNG source file of plain 8-bit grey or RGB pixels is kept too: it
    already is the lossless target format;
  * anything else (TIFF, GIF, PPM, 16-bit or transparent PNG, a resized
    image, the phantom's generated arrays) is stored as PNG of the uint8
    pixels the reader produced.
A source file is only kept when decoding it here gives exactly the reader's
array, so `decode` (which `sources.open_split` applies to every record)
returns what `readers.load_image` returned at prepare time, bit for bit,
with the same Pillow. Decoding is Pillow's, not TFDS's Image feature: that
one prefers OpenCV when installed, whose JPEG decoder rounds differently.
"""
import io

import numpy as np
from PIL import Image

from medclr.data import readers

FORMATS = ("jpeg", "png")
_PILLOW_FORMATS = {"jpeg": "JPEG", "png": "PNG"}
# PNG modes whose pixels are the reader's array as they are (no bit-depth
# scaling, palette or transparency to resolve on every read).
_PLAIN_PNG_MODES = ("L", "RGB")


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of uint8 (H, W, 1|3) pixels (lossless)."""
  pixels = image[..., 0] if image.shape[-1] == 1 else image
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, format="PNG")
  return out.getvalue()


def decode(data: bytes, image_format: str, where: str) -> np.ndarray:
  """uint8 (H, W, 1|3) of stored image bytes, as the reader converted them.

  Args:
    data: the stored bytes.
    image_format: 'jpeg' or 'png'.
    where: names the record in errors (set, split, index, stem).

  Raises:
    DataError: an unknown format, or bytes that do not decode as it.
  """
  if image_format not in _PILLOW_FORMATS:
    raise readers.DataError(
        f"{where}: unknown stored image format {image_format!r} (expected "
        f"one of {FORMATS}); re-prepare the set with `python -m "
        "launch.prepare ... --overwrite`")
  try:
    image = Image.open(io.BytesIO(data),
                       formats=(_PILLOW_FORMATS[image_format],))
    image.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise readers.DataError(
        f"{where}: the stored {image_format} image does not decode "
        f"({type(e).__name__}: {e}); the records are damaged: re-prepare "
        "the set with `python -m launch.prepare ... --overwrite`") from e
  return readers.image_to_array(image, where)


def _keepable_format(source: bytes) -> str | None:
  """'jpeg' or 'png' if `source` is a file of a format kept as it is."""
  try:
    with Image.open(io.BytesIO(source)) as image:
      kind, mode = image.format, image.mode
      transparent = "transparency" in image.info
  except (OSError, SyntaxError, ValueError):
    return None
  if kind == "JPEG":
    return "jpeg"
  if kind == "PNG" and mode in _PLAIN_PNG_MODES and not transparent:
    return "png"
  return None


def encode(image: np.ndarray,
           source: bytes | None = None) -> tuple[bytes, str]:
  """(bytes, format) a record stores for `image` (see the module docstring).

  Args:
    image: uint8 (H, W, 1|3), the pixels the reader produced.
    source: the image file's bytes, if `image` came from it unchanged
      (`readers.Example['source_bytes']`).
  """
  kind = _keepable_format(source) if source is not None else None
  if kind:
    # Decoded here, compared in full: a file is kept only if reading the
    # record gives back exactly `image`.
    try:
      if np.array_equal(decode(source, kind, "source file"), image):
        return source, kind
    except readers.DataError:
      pass  # the reader read it, this decoder not: store the pixels
  return encode_png(image), "png"
