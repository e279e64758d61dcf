r"""The fine-tuning recipe's own rows: what benchmarks.drive_study ran.

  python -m launch.study --config=configs/study_recipe.py:quick \
      --workdir=$WORK --config.arms=scratch --config.k=2,20 \
      --config.seeds=0,1,2 --config.cross=stare [--config.dataset=stare] \
      [--config.variant=fov540 \
       --config.finetune_overrides=--config.data.fov_diameter=540] \
      [--config.results_name=ablation]

Unlike configs/study_drive.py, cells fine-tune with the recipe as it is (no
study overrides), every seed runs at every k, and arms written without a
pool (`simclr_basic_medical`) pretrain on DRIVE training + HRF, so rows keep
the arm names of the committed ones. Rows go to
benchmarks/results/drive_study.jsonl (`smoke`: drive_study_smoke.jsonl;
`--config.results_name` or `--results` to change) with the rows table
beside it (`report=table`). A fine-tuning workdir that exists without a
row is refused, as benchmarks.drive_study did:
`--config.existing_cells=continue` resumes it (drive_study's --resume),
`restart` starts it again. Arguments as configs/study_drive.py (`quick`,
`full`, `smoke`).
"""
from configs import study_drive


def get_config(arg="quick"):
  """Recipe rows config; see the module docstring for `arg`."""
  config = study_drive.get_config(arg)
  if config.profile != "smoke":
    config.pools = {"small": "drive:train,hrf:train"}
    config.dataset = "drive"
  # smoke: study_drive's phantom pool and labelled set, as the study tests.
  config.default_pool = "small"
  config.arms = "scratch,simclr_basic_medical"
  config.cross = ""
  config.k = "2"
  config.seeds = "0"
  config.all_seeds_k = "all"
  config.finetune_overrides = ""
  config.existing_cells = "refuse"
  config.report = "table"
  # A smoke run never writes to the committed rows.
  config.results_name = ("drive_study_smoke" if config.profile == "smoke"
                         else "drive_study")
  return config
