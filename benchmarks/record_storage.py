r"""Prepared records' size against their source files, and the cost to read.

  python -m benchmarks.record_storage --dataset=unlabeled --name=fundus_pool \
      --manual_dir=../shared/data/fundus_pool
  python -m benchmarks.record_storage --dataset=drive \
      --manual_dir=../shared/data/drive

Prepares the set with `medclr.data.prepare.prepare` (as `launch.prepare`
does) into a temporary data_dir, removed afterwards (or into --data_dir,
kept, replacing a set of that name, e.g. for `benchmarks.input_pipeline`),
and reports:
  * source_image_bytes: the files of the `images/` folders under manual_dir
    (what becomes each record's image); source_label_bytes: the other image
    files there (masks, FOVs; DRIVE's second observer is never read);
  * record_bytes: every file of the prepared set (records, metadata) and
    records_per_source, record_bytes / source_image_bytes (issue 27 asks
    at most 1.5 for the fundus pool);
  * prepare_wall_s and prepare_cpu_s (this process, all threads): reading,
    FOV estimation, encoding, writing;
  * decode_ms_per_image: median time of `source[i]` (read one record and
    decode its image) over up to --decode_samples records, and
    decode_cpu_ms_per_image, the same in this thread's CPU time (less
    sensitive to other work on the machine);
  * the record version and how many images are stored as which format.
Run it from an older checkout to measure that version's records (1.0.0:
decoded pixels). Only sizes and times are written: no paths, no pixels.
"""
import argparse
import collections
import pathlib
import statistics
import sys
import tempfile
import time

from benchmarks import common

NAME = "record_storage"


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog=f"python -m benchmarks.{NAME}",
      description="Size of prepared records vs their sources, read cost.")
  parser.add_argument("--dataset", required=True,
                      help="as launch.prepare: drive, folder, unlabeled, ...")
  parser.add_argument("--manual_dir", required=True)
  parser.add_argument("--name", default=None)
  parser.add_argument("--long_side", type=int, default=None)
  parser.add_argument("--decode_samples", type=int, default=64)
  parser.add_argument("--data_dir", default=None,
                      help="keep the prepared set here (default: temporary)")
  parser.add_argument("--results", default=None)
  return parser.parse_args(argv)


def source_bytes(manual_dir):
  """(bytes of files in images/ folders, bytes of other image files)."""
  from medclr.data import readers  # pylint: disable=g-import-not-at-top
  images = labels = 0
  for path in pathlib.Path(manual_dir).rglob("*"):
    if not path.is_file() or path.suffix.lower() not in (
        readers.IMAGE_EXTENSIONS):
      continue
    if path.parent.name == "images":
      images += path.stat().st_size
    else:
      labels += path.stat().st_size
  return images, labels


def read_cost(data_dir, name, samples):
  """Median wall and thread CPU ms per `source[i]`, images per stored
  format, over all splits."""
  from medclr.data import sources  # pylint: disable=g-import-not-at-top
  times, cpu_times, formats = [], [], collections.Counter()
  for split in sources.available_splits(data_dir, name):
    source = sources.open_split(data_dir, name, split)
    step = max(1, len(source) // samples)
    for index in range(0, len(source), step)[:samples]:
      start, cpu = time.perf_counter(), time.thread_time()
      source[index]  # pylint: disable=pointless-statement
      times.append(time.perf_counter() - start)
      cpu_times.append(time.thread_time() - cpu)
    # Undecoded records (version 2.0.0) name their format; before, pixels.
    records = getattr(source, "records", None)
    for index in range(len(source)):
      formats[records[index]["image_format"].decode() if records
              else "pixels (zlib)"] += 1
  return {"decode_ms_per_image": 1000 * statistics.median(times),
          "decode_cpu_ms_per_image": 1000 * statistics.median(cpu_times),
          "stored_formats": dict(formats)}


def main(argv=None):
  """Runs the benchmark; returns the record it wrote."""
  args = parse_args(argv)
  from medclr.data import prepare  # pylint: disable=g-import-not-at-top
  images, labels = source_bytes(args.manual_dir)
  with tempfile.TemporaryDirectory(prefix="medclr_bench_") as tmp:
    data_dir = args.data_dir or tmp
    wall, cpu = time.perf_counter(), time.process_time()
    path = prepare.prepare(args.dataset, args.manual_dir, data_dir,
                           name=args.name, long_side=args.long_side,
                           overwrite=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stored = sum(f.stat().st_size for f in path.iterdir())
    read = read_cost(data_dir, path.parent.name, args.decode_samples)
  result = {
      "dataset": args.dataset, "name": path.parent.name,
      "long_side": args.long_side, "record_version": path.name,
      "images": sum(read["stored_formats"].values()),
      "stored_formats": read["stored_formats"],
      "source_image_bytes": images, "source_label_bytes": labels,
      "record_bytes": stored, "records_per_source": stored / images,
      "prepare_wall_s": wall, "prepare_cpu_s": cpu,
      "decode_ms_per_image": read["decode_ms_per_image"],
      "decode_cpu_ms_per_image": read["decode_cpu_ms_per_image"],
      "peak_rss_mb": common.peak_rss_mb(),
  }
  return common.report(NAME, result, args.results)


if __name__ == "__main__":
  main(sys.argv[1:])
