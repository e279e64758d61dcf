r"""Input pipeline alone vs the step's consumption, for every augment preset.

  python -m benchmarks.input_pipeline                     # phantom, 584 px
  python -m benchmarks.input_pipeline --data_dir=$MEDCLR_DATA_DIR \
      --sources=drive:train,hrf:train                     # real DRIVE + HRF

For each preset of `medclr.augment.PRESETS` it times, in two-view images/s
(2 per image, as the step counts):
  * host: Grain's `pipeline.pretrain_dataset` (decode from the cached records,
    two random resized crops per image with the preset's crop ranges,
    batching), `next()` on the iterator;
  * device: `augment.two_views` jitted on a batch already on device;
    with --crop_site=device the host only ships each image fitted into a canvas
    (`config.data.crop_site='device'`) and the device also cuts the two views
    (`medclr.augment.crops`) before augmenting them;
  * pipeline: both in sequence as the training loop runs them (host batch ->
    `sharding.to_global` -> device augmentation, blocking).
`outruns_step` is pipeline images/s > the step's images/s.

Beside the step's time per batch (`step_ms`) it reports what reading one
record costs when it is not cached (`decode`: `source[i]`, the stored image
decoded, median over up to --decode_samples records spread over each set),
per image (wall and this thread's CPU time) and per batch, as a share of
the step, with the records' bytes on
disk per image and their version (2.0.0 encoded images, 1.0.0 decoded
pixels); each preset adds `host_ms_per_step`, the host pipeline's time per
batch. `pipeline.CachedRecords` keeps decoded records up to 512 MB, so a
pool larger than that (the 1,548-image fundus pool is 1.5 GB decoded) pays
the decode on most reads, every epoch. The step rate is
the canonical model step (`medclr_images_per_s`, no augmentation, the larger
and so stricter of the two) read from the latest matching record of
benchmarks/results/pretrain_step.jsonl, or measured here when there is none
(or with --measure_step). Without --data_dir a phantom set of DRIVE-sized
images is prepared in a temporary directory. The last stdout line is one JSON
object, also appended to benchmarks/results/input_pipeline.jsonl.
"""
import argparse
import collections
import statistics
import sys
import tempfile
import time

from benchmarks import common
from benchmarks import pretrain_step

NAME = "input_pipeline"


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog=f"python -m benchmarks.{NAME}",
      description="Grain + dm-pix two-view rate per preset vs the step.")
  parser.add_argument("--data_dir", default=None,
                      help="prepared TFDS records; default: a temporary "
                           "phantom set")
  parser.add_argument("--sources", default="drive:train,hrf:train",
                      help="name:split list used with --data_dir")
  parser.add_argument("--phantom_images", type=int, default=20)
  parser.add_argument("--phantom_size", type=int, default=584,
                      help="phantom side (DRIVE is 565x584)")
  parser.add_argument("--presets", default="all",
                      help="comma list of augment presets, or 'all'")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--worker_count", type=int, default=0,
                      help="Grain worker processes (config.data.worker_count)")
  parser.add_argument("--crop_site", choices=("host", "device"),
                      default="host",
                      help="where the random resized crops are cut "
                           "(config.data.crop_site)")
  parser.add_argument("--steps", type=int, default=10, help="timed batches")
  parser.add_argument("--decode_samples", type=int, default=64,
                      help="records timed per set for the decode cost")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--step_images_per_s", type=float, default=None,
                      help="the step's rate; skips reading/measuring it")
  parser.add_argument("--step_results", default=None,
                      help="pretrain_step JSONL to read the step rate from")
  parser.add_argument("--measure_step", action="store_true",
                      help="measure the step here even if a record exists")
  parser.add_argument("--widths", default=pretrain_step.CANONICAL_WIDTHS,
                      help="model widths when the step is measured here")
  parser.add_argument("--results", default=None)
  args = parser.parse_args(argv)
  args.widths = common.parse_widths(args.widths)
  from medclr.augment import ops as augment  # pylint: disable=g-import-not-at-top
  if args.presets == "all":
    args.presets = list(augment.PRESETS)
  else:
    args.presets = [p for p in args.presets.split(",") if p]
    unknown = sorted(set(args.presets) - set(augment.PRESETS))
    if unknown:
      raise SystemExit(f"--presets: unknown {unknown}; known: "
                       f"{sorted(augment.PRESETS)}")
  return args


def step_rate(args, mesh):
  """(images/s, where it came from) of the canonical step without aug."""
  if args.step_images_per_s:
    return args.step_images_per_s, "--step_images_per_s"
  widths = list(args.widths)
  path = args.step_results or common.default_results_path(pretrain_step.NAME)
  if not args.measure_step:
    record = common.latest_record(
        path, batch=args.batch, size=args.size, precision="float32",
        widths=widths, devices=args.devices)
    if record:
      return (record["medclr_images_per_s"],
              f"{common.repo_relative(path)} at {record['timestamp']}")
  config = pretrain_step.canonical_config(
      batch=args.batch, size=args.size, widths=args.widths)
  step = pretrain_step.MedclrStep(pretrain_step.Model(config, mesh),
                                  mesh=mesh, preset="none")
  times = common.time_calls(step, args.steps, args.warmup)
  return 2 * args.batch / common.median(times), "measured in this run"


def prepare_phantom(args, tmp):
  from medclr.data import prepare  # pylint: disable=g-import-not-at-top
  prepare.prepare("phantom", None, tmp, num_train=args.phantom_images,
                  num_test=1, size=args.phantom_size)
  return tmp, "phantom:train"


def _set_bytes(data_dir, name):
  """(bytes on disk, record version) of prepared set `name`."""
  from medclr.data import tfds_builder  # pylint: disable=g-import-not-at-top
  path = tfds_builder.dataset_dir(data_dir, name)
  return sum(f.stat().st_size for f in path.iterdir()), path.name


def decode_cost(args, data_dir, sources):
  """Cost of reading one record that is not cached, and the records' size."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from medclr.data import sources as sources_lib  # pylint: disable=g-import-not-at-top
  times, cpu_times = [], []
  records, stored, versions = 0, 0, collections.Counter()
  names = [name for name, _ in sources_lib.parse_sources(sources)]
  for name, source in zip(names, sources_lib.open_sources(data_dir, sources)):
    count = min(args.decode_samples, len(source))
    for index in np.unique(np.linspace(0, len(source) - 1, count).round()):
      start, cpu = time.perf_counter(), time.thread_time()
      source[int(index)]  # pylint: disable=pointless-statement
      times.append(time.perf_counter() - start)
      cpu_times.append(time.thread_time() - cpu)
  for name in sorted(set(names)):  # sizes per set, all of its splits
    set_bytes, version = _set_bytes(data_dir, name)
    set_records = sum(sources_lib.split_size(data_dir, name, split) for split
                      in sources_lib.available_splits(data_dir, name))
    records += set_records
    stored += set_bytes
    versions[version] += set_records
  ms_per_image = 1000 * statistics.median(times)
  return {
      "ms_per_image": ms_per_image, "ms_per_batch": ms_per_image * args.batch,
      # This thread's CPU time: what the decode costs with the machine's
      # other work taken out (wall time grows with the load average).
      "cpu_ms_per_image": 1000 * statistics.median(cpu_times),
      "records_timed": len(times),
      "stored_kb_per_image": stored / records / 1024,
      "record_versions": dict(versions),
  }


def measure_preset(args, mesh, data_dir, sources, preset):
  """Host, device and combined two-view images/s for one preset."""
  import jax  # pylint: disable=g-import-not-at-top
  from medclr.augment import ops as augment  # pylint: disable=g-import-not-at-top
  from medclr.augment import crops as device_crops  # pylint: disable=g-import-not-at-top
  from medclr import sharding  # pylint: disable=g-import-not-at-top
  from medclr.data import pipeline  # pylint: disable=g-import-not-at-top

  spec = augment.get_spec(preset)
  canvas = (device_crops.canvas_side(args.size, spec.crop_area)
            if args.crop_site == "device" else 0)
  dataset = pipeline.pretrain_dataset(
      data_dir, sources, image_size=args.size, in_channels=3,
      area=spec.crop_area, aspect=spec.crop_aspect, local_batch=args.batch,
      seed=0, worker_count=args.worker_count, device_crops=canvas)
  iterator = iter(dataset)
  views = 2 * args.batch
  host_times = common.time_calls(lambda: next(iterator), args.steps,
                                 args.warmup)
  crop_spec = device_crops.CropSpec(args.size, tuple(spec.crop_area),
                                    tuple(spec.crop_aspect))

  def views_fn(key, batch):
    if canvas:
      batch = device_crops.two_crops(jax.random.fold_in(key, 1), batch,
                                     crop_spec)
    return augment.two_views(key, batch["view1"], batch["view2"], spec)

  with jax.set_mesh(mesh):
    augment_fn = jax.jit(views_fn)
    device_batch = sharding.to_global(next(iterator), mesh)
    keys = iter(jax.random.split(jax.random.key(0),
                                 2 * (args.steps + args.warmup) + 1))

    def device_only():
      jax.block_until_ready(augment_fn(next(keys), device_batch))

    def host_and_device():
      batch = sharding.to_global(next(iterator), mesh)
      jax.block_until_ready(augment_fn(next(keys), batch))

    device_times = common.time_calls(device_only, args.steps, args.warmup)
    both_times = common.time_calls(host_and_device, args.steps, args.warmup)
  return {
      "host_images_per_s": views / common.median(host_times),
      "host_ms_per_step": 1000 * common.median(host_times),
      "device_aug_images_per_s": views / common.median(device_times),
      "pipeline_images_per_s": views / common.median(both_times),
      "canvas": canvas or None,
  }


def main(argv=None):
  """Runs the benchmark; returns the record it wrote."""
  args = parse_args(argv)
  common.force_cpu_devices(args.devices)
  import jax  # pylint: disable=g-import-not-at-top
  from medclr import sharding  # pylint: disable=g-import-not-at-top

  mesh = sharding.make_mesh(args.devices)
  if args.batch % args.devices:
    raise SystemExit(f"--batch={args.batch} must be divisible by "
                     f"--devices={args.devices}")
  with tempfile.TemporaryDirectory(prefix="medclr_bench_") as tmp:
    if args.data_dir:
      data_dir, sources, data = args.data_dir, args.sources, args.sources
    else:
      data_dir, sources = prepare_phantom(args, tmp)
      data = (f"phantom {args.phantom_images} x {args.phantom_size}px "
              "(temporary)")
    decode = decode_cost(args, data_dir, sources)
    presets = {p: measure_preset(args, mesh, data_dir, sources, p)
               for p in args.presets}
  consumption, source = step_rate(args, mesh)
  # The step's rate counts two views per image.
  step_ms = 1000 * 2 * args.batch / consumption
  decode["share_of_step"] = decode["ms_per_batch"] / step_ms
  for numbers in presets.values():
    numbers["outruns_step"] = bool(
        numbers["pipeline_images_per_s"] > consumption)
  result = {
      "batch": args.batch, "size": args.size, "devices": mesh.devices.size,
      "backend": jax.default_backend(), "data": data,
      "worker_count": args.worker_count, "crop_site": args.crop_site,
      "step_images_per_s": consumption, "step_source": source,
      "step_ms": step_ms, "decode": decode,
      "presets": presets,
      "all_outrun_step": all(p["outruns_step"] for p in presets.values()),
      "peak_rss_mb": common.peak_rss_mb(),
  }
  return common.report(NAME, result, args.results)


if __name__ == "__main__":
  main(sys.argv[1:])
