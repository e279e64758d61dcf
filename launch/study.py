r"""Runs (or resumes) a few-label study; the work is `medclr.study.runner`.

  python -m launch.study --config=configs/study_drive.py:quick \
      --workdir=/tmp/study [--shared_data=../shared/data]
  python -m launch.study --config=configs/study_recipe.py:quick \
      --workdir=/tmp/recipe --config.cross=stare --config.variant=fov540 \
      --config.finetune_overrides=--config.data.fov_diameter=540
"""
import pathlib
import sys

from absl import flags
from ml_collections import config_flags

from launch import cli
from medclr.study import cells
from medclr.study import runner

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "study config file", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "pretraining and fine-tuning workdirs, prepared data and "
    "the study log go here")
_SHARED = flags.DEFINE_string(
    "shared_data", str(cells.REPO.parent / "shared" / "data"),
    "folder holding drive/, stare/, hrf_unlabeled/, fundus_pool/")
_RESULTS = flags.DEFINE_string(
    "results", None, "rows file (.jsonl; the report goes beside it as .md); "
    "default benchmarks/results/<config.results_name>.jsonl, else "
    "study_<profile>.jsonl")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "only rewrite the report and plots from the rows "
    "file (no data, no runs); --workdir is not read")
flags.mark_flags_as_required(["config", "workdir"])


def main(_):
  config = _CONFIG.value
  results = runner.results_path(config, _RESULTS.value)
  try:
    if _REPORT_ONLY.value:
      runner.write_report(config, results)
    else:
      runner.run_study(config, _WORKDIR.value, _SHARED.value, results)
  except (ValueError, FileNotFoundError, FileExistsError,
          cells.CommandFailed) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  plots = sorted(results.parent.glob(f"{results.stem}_*.png"))
  runs = [] if _REPORT_ONLY.value else [pathlib.Path(_WORKDIR.value)]
  return [results, results.with_suffix(".md"), *plots, *runs]


if __name__ == "__main__":
  cli.run(main, log_dir=lambda: None if _REPORT_ONLY.value
          else _WORKDIR.value)
