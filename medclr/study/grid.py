"""Study arms and cells: what to pretrain, and which (arm, k, seed) to run.

An arm is written `<name>[*<strength>][@<pool>]`:
  - `scratch`: no pretraining; `arco`: none either, and ARCO's
    semi-supervised fine-tuning;
  - `<method>_<preset>` (e.g. `simclr_basic_medical`: configs/pretrain_simclr.py
    with preset=basic_medical) or a name of NAMED_ARMS (`dino_weak`, ...);
  - `*0.5` scales the augmentation preset (`config.augment.strength`);
  - `@large` pretrains on the pool named `large` in `config.pools`;
  - `best@small`: the pretrained arm with the highest mean k=2 Dice so far,
    again on pool `small` (resolved once every other arm has finished).

What an arm's method needs (the U-Net parts fine-tuning loads, whether it
can pretrain on the pool) comes from the facts its class declares
(medclr/methods/__init__.py), found through the arm's config; the tables
below hold only what belongs to the study's arms.
"""
import dataclasses
import importlib
import sys

from configs import finetune_unet
from medclr import methods

# Arms that need more than `<method>_<preset>`: (config file stem, config
# args after the colon, extra --config flags).
NAMED_ARMS = {
    # ContrastiveCrop is a crop option; with MoCo v2, one of its papers' hosts.
    "ccrop_mocov2": ("mocov2", "preset=mocov2",
                     ["--config.contrastive_crop.mode=ccrop"]),
    "dino_default": ("dino", "multicrop=dino_default", []),
    "dino_weak": ("dino", "multicrop=weak", []),
    "dino_strong": ("dino", "multicrop=strong", []),
    "chaitanya_gd": ("volume_supcon", "chaitanya,positives=gd", []),
    "chaitanya_gd-": ("volume_supcon", "chaitanya,positives=gd-", []),
    "pcl": ("volume_supcon", "pcl,threshold=0.1", []),
    # Decoder pretraining (issue 11). MACL on a 2D pool: positives are the
    # other view only (docs/methods/macl.md).
    "macl": ("macl", "volumes=0", []),
    # MACL with PCL's slice-position positives, on a real volume pool (the
    # ISBI 2012 EM stack, configs/study_em.py).
    "macl_volumes": ("macl", "", []),
    "dira": ("dira", "", []),
    # The decoder stage; its encoder comes from STAGE_ONE's arm.
    "chaitanya_local": ("chaitanya_local", "", []),
}
# Fine-tuning flags of arms that are not a method's: `arco` is scratch
# pretraining with ARCO's semi-supervised fine-tuning (docs/methods/arco.md).
# The parts a pretrained arm loads come from its method (`load_flags`).
FINETUNE_FLAGS = {
    # Ramp-up over a third of the study's 300-step cells, as in the rows of
    # benchmarks/results/decoder_pretraining.md.
    "arco": ["--config.semi.mode=arco", "--config.semi.rampup_steps=100"],
}
# Two-stage arms: the arm (on the same pool) whose checkpoint initialises
# the second stage. The local stage starts from the study's best encoder-only
# SimCLR (benchmarks/results/decoder_pretraining.md).
STAGE_ONE = {"chaitanya_local": "simclr_simclr_strong*0.25"}
# Arms without pretraining, like scratch.
UNPRETRAINED = ("scratch", "arco")
# Volume sets a pool may hold, written by launch.prepare_volumes (its flags,
# and the folder of the shared data it reads): the ISBI 2012 challenge's 30
# unlabelled test sections, one serial-section volume at native size (a
# separate stack from the labelled one, so nothing labelled enters the pool).
VOLUME_SETS = {
    "isbi_em_stack": ("--name=isbi_em_stack --size=0",
                      "isbi2012_em/test/image"),
}
BEST = "best"


def arm_pretrain_config(base):
  """Base arm name -> (config stem, config args, extra flags); scratch: None.

  'simclr_basic_medical' -> ('simclr', 'preset=basic_medical', []); named
  arms come from NAMED_ARMS.
  """
  if base in UNPRETRAINED:
    return None
  if base in NAMED_ARMS:
    return NAMED_ARMS[base]
  method, _, preset = base.partition("_")
  if not preset:
    raise ValueError(f"arm {base!r}: expected scratch, <method>_<preset> or "
                     f"one of {sorted(NAMED_ARMS)}")
  return method, f"preset={preset}", []


def method_of(base):
  """The method class (with its facts) a pretrained base arm runs, read from
  its config file."""
  stem, config_args, _ = arm_pretrain_config(base)
  config = importlib.import_module(f"configs.pretrain_{stem}").get_config(
      config_args or None)
  return methods.class_for(config)


def load_flags(method):
  """`--config.init.load` for the U-Net parts `method` transfers, when
  fine-tuning's default does not load exactly those."""
  load = ",".join(method.transfers)
  if load == finetune_unet.get_config().init.load:
    return []
  return [f"--config.init.load={load}"]


def trains_on_pool(base, sources):
  """Whether a pretrained base arm pretrains on the pool `sources`.

  A method whose host pipeline reads volumes needs slices with volume ids:
  on a pool of 2D images (DRIVE, HRF) it keeps its config's own volume set
  (the procedural synthetic volumes unless overridden) and only fine-tunes
  on the study's data.
  """
  if method_of(base).host_pipeline != "volumes":
    return True
  sets = {s.split(":")[0].strip() for s in sources.split(",") if s.strip()}
  return bool(sets) and sets <= set(VOLUME_SETS)


@dataclasses.dataclass(frozen=True)
class Arm:
  """One parsed arm expression (see the module docstring)."""
  name: str  # as written, e.g. 'simclr_simclr_strong*0.5@large'
  base: str  # 'simclr_simclr_strong'
  strength: float | None = None
  pool: str | None = None

  @property
  def pretrained(self):
    return self.base not in UNPRETRAINED

  @property
  def finetune_flags(self):
    """--config flags this arm adds to every fine-tuning run."""
    flags = list(FINETUNE_FLAGS.get(self.base, []))
    if self.pretrained and self.base != BEST:
      flags = load_flags(method_of(self.base)) + flags
    return flags

  @property
  def stage_one(self):
    """The Arm whose checkpoint starts this one's pretraining, or None."""
    if self.base not in STAGE_ONE:
      return None
    return parse_arm(STAGE_ONE[self.base] +
                     (f"@{self.pool}" if self.pool else ""))


def parse_arm(text, pools=None):
  """'simclr_simclr_strong*0.5@large' -> Arm; checks the pool is known."""
  name = text.strip()
  rest, _, pool = name.partition("@")
  base, _, strength = rest.partition("*")
  if pools is not None and pool and pool not in pools:
    raise ValueError(f"arm {name!r}: unknown pool {pool!r}; config.pools "
                     f"has {sorted(pools)}")
  if base in UNPRETRAINED and (pool or strength):
    raise ValueError(f"arm {name!r}: {base} pretrains nothing, so it takes "
                     "no pool or strength")
  if base != BEST:
    arm_pretrain_config(base)  # validates the name
  try:
    value = float(strength) if strength else None
  except ValueError:
    raise ValueError(f"arm {name!r}: strength {strength!r} is not a "
                     "number") from None
  return Arm(name=name, base=base, strength=value, pool=pool or None)


def parse_arms(text, pools):
  arms = [parse_arm(t, pools) for t in text.split(",") if t.strip()]
  names = [a.name for a in arms]
  if len(set(names)) != len(names):
    raise ValueError(f"config.arms lists an arm twice: {names}")
  return arms


def seeds_for(k, seeds, all_seeds_k):
  """Every seed for the k in `all_seeds_k`, else the first seed only."""
  return list(seeds) if k in all_seeds_k else list(seeds[:1])


def cells(arms, ks, seeds, all_seeds_k):
  """All (arm name, k, seed) cells, arm by arm."""
  return [(arm.name, k, seed) for arm in arms for k in ks
          for seed in seeds_for(k, seeds, all_seeds_k)]


def resolve_best(arm, mean_k2_dice):
  """`best@pool` -> the pretrained arm with the highest mean k=2 Dice.

  Args:
    arm: an Arm whose base is BEST.
    mean_k2_dice: {arm name: mean k=2 Dice} of the finished arms.
  """
  candidates = {name: dice for name, dice in mean_k2_dice.items()
                if parse_arm(name).pretrained and parse_arm(name).base != BEST}
  if not candidates:
    raise ValueError(f"arm {arm.name!r} needs finished pretrained arms")
  best = parse_arm(max(candidates, key=candidates.get))
  return Arm(name=f"{best.base}" + (f"*{best.strength:g}" if best.strength
                                    is not None else "") + f"@{arm.pool}",
             base=best.base, strength=best.strength, pool=arm.pool)


def profile_arg(profile):
  """The config argument of a study profile: 'full' is the configs' default."""
  return "" if profile == "full" else profile


def pretrain_command(arm, profile, pretrain_dir, data_dir, sources,
                     overrides=()):
  """The `launch.pretrain` command of a pretrained arm.

  `sources` is the pool (`name:split` list); volume methods keep their
  config's own volume set on a 2D pool (`trains_on_pool`).
  """
  stem, config_args, extra = arm_pretrain_config(arm.base)
  flags = ([f"--config.data.sources={sources}"]
           if trains_on_pool(arm.base, sources) else [])
  if arm.strength is not None:
    flags.append(f"--config.augment.strength={arm.strength:g}")
  return [
      sys.executable, "-m", "launch.pretrain",
      f"--config=configs/pretrain_{stem}.py:{profile_arg(profile)},"
      f"{config_args}",
      f"--workdir={pretrain_dir}", f"--config.data.data_dir={data_dir}",
      *flags, *extra, *overrides]
