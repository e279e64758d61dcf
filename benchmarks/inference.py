r"""Sliding-window inference of one full fundus image: medclr vs PyTorch.

  python -m benchmarks.inference        # DRIVE test image 01 if ../shared/data

The image is DRIVE's first test image (584x565) when ../shared/data (or
--shared_data) holds DRIVE, else a phantom of the same size. Both sides run
the identical `unet2d-32` U-Net (random weights: speed does not depend on
them) with a 128 px window, overlap 0.5, Gaussian weighting (sigma 1/8 of the
window) and the same windows per batch:
  * medclr: `medclr.evaluate.inference.sliding_window_predict` driving the
    jitted
    `models.make_predict_fn`, as `medclr.evaluate.evaluate` does;
  * PyTorch: MONAI's `sliding_window_inference(mode='gaussian')` when monai
    is installed, else medclr's own host loop driving the PyTorch model (a
    plain loop with the same windows and weights).
Rates are images/s (one full image per call), medians over repeats after a
warm-up call (which includes medclr's compilation). The last stdout line is
one JSON object, also appended to benchmarks/results/inference.jsonl.
"""
import argparse
import pathlib
import sys

from benchmarks import common
from benchmarks import pretrain_step

NAME = "inference"
DRIVE_SHAPE = (584, 565)  # rows x columns of every DRIVE image


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog=f"python -m benchmarks.{NAME}",
      description="Sliding-window inference of one full image; JSON last "
                  "line.")
  parser.add_argument("--shared_data",
                      default=str(common.REPO.parent / "shared" / "data"),
                      help="folder holding drive/test/images")
  parser.add_argument("--phantom", action="store_true",
                      help="use a phantom even if DRIVE is present")
  parser.add_argument("--height", type=int, default=DRIVE_SHAPE[0],
                      help="phantom rows")
  parser.add_argument("--width", type=int, default=DRIVE_SHAPE[1],
                      help="phantom columns")
  parser.add_argument("--widths", default=pretrain_step.CANONICAL_WIDTHS)
  parser.add_argument("--window", type=int, default=128)
  parser.add_argument("--overlap", type=float, default=0.5)
  parser.add_argument("--sw_batch", type=int, default=4,
                      help="windows per model call (config.eval.batch_size)")
  parser.add_argument("--repeats", type=int, default=3, help="timed images")
  parser.add_argument("--warmup", type=int, default=1)
  common.add_torch_flags(parser)
  parser.add_argument("--results", default=None)
  args = parser.parse_args(argv)
  args.widths = common.parse_widths(args.widths)
  common.check_size(args.window, args.widths, flag="--window")
  return args


def load_image(args):
  """(float32 HxWx3 image in [0, 1], description)."""
  from medclr.data import crops  # pylint: disable=g-import-not-at-top
  from medclr.data import phantom  # pylint: disable=g-import-not-at-top
  from medclr.data import readers  # pylint: disable=g-import-not-at-top

  drive_image = (pathlib.Path(args.shared_data) / "drive" / "test" /
                 "images" / "01_test.tif")
  if not args.phantom and drive_image.is_file():
    image = readers.load_image(drive_image)
    return crops.to_float(image, 3), f"DRIVE {drive_image.name}"
  side = max(args.height, args.width)
  image = phantom.generate(1, side, seed=0)[0]["image"]
  image = image[:args.height, :args.width]
  return crops.to_float(image, 3), f"phantom {args.height}x{args.width}"


def medclr_predict_fn(widths):
  """The jitted eval-mode U-Net predict of `evaluate.Predictor`."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from medclr import models  # pylint: disable=g-import-not-at-top

  model = models.make_unet(common.model_config(widths, "float32"),
                           nnx.Rngs(0))
  graphdef, params, batch_stats = models.split_model(model)
  predict = models.make_predict_fn(graphdef)
  return jax.jit(lambda x: predict(params, batch_stats, x))


def measure_medclr(args, image):
  from medclr.evaluate import inference  # pylint: disable=g-import-not-at-top
  predict = medclr_predict_fn(args.widths)

  def run():
    return inference.sliding_window_predict(
        predict, image, args.window, overlap=args.overlap,
        batch_size=args.sw_batch)

  times = common.time_calls(run, args.repeats, args.warmup)
  return {"images_per_s": 1.0 / common.median(times),
          "image_s": common.median(times), "image_times_s": times,
          "logits_shape": list(run().shape)}


def measure_torch(args, image):
  """PyTorch's rate and what ran, or (None, reason)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_peer  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, (f"torch not importable ({e}); install the bench extra: "
                  "pip install torch==2.13.0")
  model, predict_nhwc = torch_peer.make_unet_predict(3, args.widths)
  try:
    # pylint: disable-next=g-import-not-at-top
    from monai.inferers import sliding_window_inference
  except ImportError:
    sliding_window_inference = None

  if sliding_window_inference is not None:
    inputs = torch.from_numpy(image).permute(2, 0, 1)[None].contiguous()

    def predictor(windows):
      return model(windows.contiguous(memory_format=torch.channels_last))

    def run():
      with torch.inference_mode():
        return sliding_window_inference(
            inputs, (args.window, args.window), args.sw_batch, predictor,
            overlap=args.overlap, mode="gaussian", sigma_scale=0.125,
            padding_mode="reflect")

    implementation = "monai.inferers.sliding_window_inference"
  else:
    from medclr.evaluate import inference  # pylint: disable=g-import-not-at-top

    def run():
      return inference.sliding_window_predict(
          predict_nhwc, image, args.window, overlap=args.overlap,
          batch_size=args.sw_batch)

    implementation = "medclr.evaluate.inference host loop driving torch"
  times = common.time_calls(run, args.repeats, args.warmup)
  return {"images_per_s": 1.0 / common.median(times),
          "image_s": common.median(times), "image_times_s": times,
          "implementation": implementation,
          "threads": torch.get_num_threads()}, None


def main(argv=None):
  """Runs the benchmark; returns the record it wrote."""
  args = parse_args(argv)
  import jax  # pylint: disable=g-import-not-at-top

  image, description = load_image(args)
  ours = measure_medclr(args, image)
  result = {
      "image": description, "image_shape": list(image.shape),
      "widths": list(args.widths), "window": args.window,
      "overlap": args.overlap, "sw_batch": args.sw_batch,
      "backend": jax.default_backend(), "devices": 1,
      "medclr_images_per_s": ours["images_per_s"],
      "medclr_image_s": ours["image_s"],
      "medclr_image_times_s": ours["image_times_s"],
      "medclr_logits_shape": ours["logits_shape"],
      "peak_rss_mb": common.peak_rss_mb(),
  }
  if args.torch:
    peer, reason = measure_torch(args, image)
    if peer is None:
      result["torch_skipped"] = reason
    else:
      result.update({
          "torch_images_per_s": peer["images_per_s"],
          "torch_image_s": peer["image_s"],
          "torch_image_times_s": peer["image_times_s"],
          "torch_implementation": peer["implementation"],
          "torch_threads": peer["threads"],
          "ratio_vs_torch": ours["images_per_s"] / peer["images_per_s"],
      })
  return common.report(NAME, result, args.results)


if __name__ == "__main__":
  main(sys.argv[1:])
