r"""MACL on a real volume: the ISBI 2012 EM stack (issue 11's volume check).

  python -m launch.study --config=configs/study_em.py:quick \
      --workdir=/tmp/study_em [--shared_data=../shared/data]

Fundus sets have no slice positions, so the fundus study runs MACL with the
other view as its only positive (`macl`, docs/methods/macl.md). Here MACL
keeps PCL's slice-position positives (`macl_volumes`): it pretrains on the
challenge's 30 unlabelled test sections (one serial-section volume,
`isbi_em_stack`), and fine-tunes on k of the first 20 labelled training
sections, testing on the last 10 (`isbi_em`; the challenge's test labels
are not public). Arms: scratch and MACL (batch 16: the pool has 30
sections); k = 1 and 2 with 3 seeds. Rows go
to benchmarks/results/study_em_<profile>.jsonl. Arguments as
configs/study_drive.py (`quick`, `full`, `smoke`).
"""
from configs import study_drive

POOLS = {"em": "isbi_em_stack:train"}
ARMS = ("scratch", "macl_volumes@em")


def get_config(arg="quick"):
  """EM study config; see the module docstring for `arg`."""
  config = study_drive.get_config(arg)
  if config.profile == "smoke":
    return config  # the phantom smoke study: nothing EM-specific to test
  config.pools = dict(POOLS)
  config.arms = ",".join(ARMS)
  config.dataset = "isbi_em"
  config.k = "1,2"
  config.all_seeds_k = "1,2"
  config.results_name = f"study_em_{config.profile}"
  # The pool is one 30-section volume: a global batch must not hold a
  # section twice (pipeline.shuffled_epochs), so 16 rather than PCL's 32.
  config.pretrain_overrides = "--config.batch_size=16"
  return config
