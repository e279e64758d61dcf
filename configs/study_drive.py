r"""The few-label DRIVE study: is stronger augmentation better?

Protocol: docs/protocol.md section 1.

  python -m launch.study --config=configs/study_drive.py:quick \
      --workdir=/tmp/study [--shared_data=../shared/data]

Arguments: `quick` (2-core CPU: the quick pretraining and fine-tuning
profiles), `full` (accelerators: the configs' defaults, no argument after
their colon), `smoke` (the tests:
phantom, two steps). Arms are written `<arm>[*strength][@pool]`
(medclr/study/grid.py); `best@small` repeats the best pretrained arm on the
small pool. Cells: every arm x k; all seeds for the k in `all_seeds_k`, the
first seed otherwise. Rows go to benchmarks/results/study_<profile>.jsonl
(`--results` to change), one per cell as it finishes, and a finished cell is
never recomputed.
"""
import ml_collections

from configs import common
from medclr import errors

# The 65-image pool of the first study (DRIVE training + HRF) and the
# 1,600-image pool: the fundus pool (1,548) + DRIVE, HRF and STARE training
# images at DRIVE's scale. Never a DRIVE or STARE test image.
POOLS = {
    "small": "drive:train,hrf:train",
    "large": "fundus_pool:train,drive:train,hrf:train,stare584:train",
}
# SimCLR with its own views, weaker versions of them, and the medical
# preset; MoCo v2 and DINO (weak crops), the two best other methods of the
# first quick study (benchmarks/results/drive_study.md, v1_recipe rows: AdCo
# tied DINO within 0.001 and is twice as slow); the best pretrained arm
# again on the small pool.
ARMS = ("scratch",
        "simclr_simclr_strong@large",
        "simclr_simclr_strong*0.5@large",
        "simclr_simclr_strong*0.25@large",
        "simclr_basic_medical@large",
        "mocov2_mocov2@large",
        "dino_weak@large",
        "best@small")


def get_config(arg="quick"):
  """Study config; see the module docstring for `arg`."""
  args = common.parse_arg(arg, smoke=False, quick=False, full=False)
  if sum((args.smoke, args.quick, args.full)) != 1:
    raise errors.ConfigError(
        f"configs/study_drive.py: pass exactly one of smoke, quick, full "
        f"after the colon, got {arg!r}")
  config = ml_collections.ConfigDict()
  config.profile = ("smoke" if args.smoke else "quick" if args.quick else
                    "full")
  config.pools = ml_collections.ConfigDict(POOLS)
  config.arms = ",".join(ARMS)
  config.dataset = "drive"  # labelled set: fine-tune and test
  config.cross = ""  # other labelled sets to evaluate every model on
  config.k = "1,2,5,20"
  config.seeds = "0,1,2"
  config.all_seeds_k = "1,2"
  config.pretrain_overrides = ""
  driver_options(config)
  # Arms of another rows file beside this one shown in the report and
  # compared with (e.g. the decoder study against the first study's scratch
  # and best encoder-only arm): '<rows stem>:<arm>,<arm>', '' for none.
  config.baselines = ""
  # 8 arms x 8 cells must fit 4 hours of 2-core compute: the quick recipe
  # (finetune_unet:quick, under 5 minutes a run) at half its steps and
  # without test-time flips or scales, about 3 minutes a cell with
  # evaluation. Every arm gets the same fine-tuning and evaluation, so arms
  # compare; the recipe's own rows are benchmarks/results/drive_study.md.
  # The study's fine-tuning stays as in its committed rows: images at their
  # own resolution, all three channels and `basic_medical` (the fine-tuning
  # defaults resample fundus FOVs, add colour augmentation and feed the
  # green channel since, docs/cross_camera.md).
  config.finetune_overrides = (
      "--config.data.fov_diameter=0 --config.data.channels=rgb "
      "--config.augment.preset=basic_medical" + (
      " --config.num_steps=300 --config.eval.tta=none --config.eval.scales=1"
      if args.quick else ""))
  if args.smoke:
    config.pools = ml_collections.ConfigDict({"small": "phantom:train"})
    config.arms = "scratch,simclr_basic_medical@small"
    config.dataset = "phantom"
    config.k = "1,2"
    config.seeds = "0,1"
    config.all_seeds_k = "1"
  return config


def driver_options(config):
  """Keys of how cells run and rows are written (defaults: the study's)."""
  # Extra launch.evaluate flags for every evaluation, e.g. '--scales=1,1.25'
  # (the metrics are read from the default eval folders: no --out_dir).
  config.eval_overrides = ""
  # Name of this set of fine-tuning (or evaluation) overrides, an ablation
  # row: rows and cell workdirs carry it, and a cell counts as done only
  # with a row of the same variant.
  config.variant = "default"
  # The pool of a pretrained arm written without `@pool` ('' for none).
  config.default_pool = ""
  # A cell's fine-tuning workdir that exists without a row: 'restart' it
  # from scratch (an interrupted cell), 'refuse' to touch it (it may be
  # another study's), or 'continue' it (launch.finetune resumes).
  config.existing_cells = "restart"
  # 'study': the report with answers and plots; 'table': the rows table
  # (over seeds, cross-dataset lines, runs) of configs/study_recipe.py.
  config.report = "study"
  # Rows go to benchmarks/results/<results_name>.jsonl unless --results is
  # given; '' is study_<profile>.
  config.results_name = ""
