"""The data sets a study may name, and how `launch.prepare` makes each.

One table for every study: a set is a labelled set (fine-tuned and tested
on: `config.dataset`, or only tested on: `config.cross`) or a pretraining
pool's member (`config.pools`). `prepare_data` runs the prepare command of
every set a study config names, exactly as a user would type it.
"""
import sys

from medclr.study import cells as cells_lib
from medclr.study import grid

# Sets a study may use: `launch.prepare` flags and their folder in the shared
# data directory (None: generated, needs no files).
KNOWN_SETS = {
    "drive": ("--dataset=drive", "drive"),
    "stare": ("--dataset=folder --name=stare", "stare"),
    "hrf": ("--dataset=hrf", "hrf_unlabeled"),
    "fundus_pool": ("--dataset=unlabeled --name=fundus_pool", "fundus_pool"),
    # STARE's training images at DRIVE's scale (long side 584, FOV about
    # 540 px) for the pretraining pool; its test images never enter a pool.
    "stare584": ("--dataset=folder --name=stare584 --long_side=584", "stare"),
    "phantom": ("--dataset=phantom", None),
    # A second phantom (other seed and size, a few images): the labelled set
    # the smoke study evaluates across, as DRIVE's models are on STARE.
    "phantom_cross": ("--dataset=phantom --name=phantom_cross --seed=5 "
                      "--size=96 --num_train=2 --num_test=2", None),
    # ISBI 2012 EM: 20 labelled sections to fine-tune on, the last 10 to
    # test on (the challenge's test labels are not public).
    "isbi_em": ("--dataset=isbi2012 --name=isbi_em --test_slices=10",
                "isbi2012_em"),
}
# Volume sets, written by launch.prepare_volumes (the grid reads them too).
VOLUME_SETS = grid.VOLUME_SETS
# The sets with vessel (or membrane) labels and a test split: the only ones
# a study may fine-tune on (`config.dataset`) or evaluate on (`config.cross`).
LABELED_SETS = ("drive", "stare", "isbi_em", "phantom", "phantom_cross")


def pool_sets(sources):
  """'fundus_pool:train,drive:train' -> {'fundus_pool', 'drive'}."""
  return {s.split(":")[0].strip() for s in sources.split(",") if s.strip()}


def cross_sets(config):
  """The labelled sets every model is also evaluated on, in order."""
  return [name.strip() for name in config.cross.split(",") if name.strip()]


def check_labeled(config):
  """Raises ValueError unless the study's dataset and cross sets are
  labelled sets (checked before any data is prepared or model trained)."""
  for key, name in [("dataset", config.dataset)] + [
      ("cross", name) for name in cross_sets(config)]:
    if name not in LABELED_SETS:
      raise ValueError(f"config.{key}: {name!r} is not a labelled set; "
                       f"known: {', '.join(LABELED_SETS)}")


def prepare_command(name, shared, data_dir):
  """The prepare command (argv) of set `name`; its raw files' folder must
  be in `shared`."""
  if name in VOLUME_SETS:
    module, (flags, folder) = "launch.prepare_volumes", VOLUME_SETS[name]
  elif name in KNOWN_SETS:
    module, (flags, folder) = "launch.prepare", KNOWN_SETS[name]
  else:
    raise ValueError(f"study set {name!r} is unknown; known: "
                     f"{sorted({**KNOWN_SETS, **VOLUME_SETS})}")
  cmd = [sys.executable, "-m", module, *flags.split(),
         f"--data_dir={data_dir}"]
  if folder:
    if not (shared / folder).is_dir():
      raise FileNotFoundError(
          f"{shared / folder} not found: pass --shared_data=DIR (the folder "
          "holding drive/, stare/, hrf_unlabeled/, fundus_pool/, "
          "isbi2012_em/)")
    cmd.append(f"--manual_dir={shared / folder}")
  return cmd


def prepare_data(config, shared, data_dir, log):
  """Prepares every set the study's pools, dataset and cross sets name."""
  check_labeled(config)
  names = {config.dataset, *cross_sets(config)}
  for sources in config.pools.values():
    names |= pool_sets(sources)
  commands = [prepare_command(name, shared, data_dir)
              for name in sorted(names)]
  for cmd in commands:  # every folder is checked before the first runs
    cells_lib.run(cmd, log)
