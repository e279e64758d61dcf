"""Starting a run from another run's weights: `config.init`.

Fine-tuning starts the U-Net from a pretraining checkpoint, and a second
pretraining stage (Chaitanya et al.'s decoder stage) starts from the first
stage's. Parts are top-level parameter trees restored by path ('encoder',
'decoder'), identical in every model that has them. A decoder pretrained
only in its deepest levels loads those levels; the rest keep their fresh
initialisation.
"""
import jax

from medclr import checkpointing
from medclr import errors

# Parts whose top-level children (decoder levels) may be saved in part.
PARTIAL_PARTS = ("decoder",)


def load_parts(init_cfg):
  return [p.strip() for p in init_cfg.load.split(",") if p.strip()]


def frozen_parts(init_cfg):
  return tuple(p.strip() for p in init_cfg.get("freeze", "").split(",")
               if p.strip())


def pretrained_checkpoint_step(init_cfg):
  """The step of the checkpoint in `init_cfg.pretrain_dir` to start from
  (None: the latest)."""
  step = init_cfg.pretrain_checkpoint_step
  return None if step < 0 else step


def _wanted(abstract, parts, saved):
  """The subtrees of `abstract` to restore: the listed parts, and of a
  partially saved part only the children the checkpoint holds."""
  wanted = {}
  for collection in ("params", "batch_stats"):
    chosen = {}
    for part in parts:
      tree = abstract[collection].get(part)
      if not tree:
        continue
      held = saved.get(collection, {}).get(part)
      if part in PARTIAL_PARTS and isinstance(held, dict):
        tree = {k: v for k, v in tree.items() if k in held}
      if tree:
        chosen[part] = tree
    if chosen:
      wanted[collection] = chosen
  return wanted


def init_from_pretrained(state, abstract, init_cfg):
  """Replaces the listed parts of a fresh `state` with pretrained weights.

  Args:
    state: freshly initialised train state.
    abstract: its abstract state (shapes and shardings).
    init_cfg: `config.init` (pretrain_dir, pretrain_checkpoint_step, load).

  Returns:
    (state, step of the checkpoint used).
  """
  saved, _ = checkpointing.saved_tree_shapes(init_cfg.pretrain_dir,
                                             pretrained_checkpoint_step(
                                                 init_cfg))
  wanted = _wanted(abstract, load_parts(init_cfg), saved)
  if "params" not in wanted:
    raise errors.ConfigError(
        f"config.init.load={init_cfg.load!r}: {init_cfg.pretrain_dir} holds "
        "none of these parts")
  restored, step = checkpointing.restore_subtrees(
      init_cfg.pretrain_dir, wanted, pretrained_checkpoint_step(init_cfg))
  for collection, parts in restored.items():
    for part, tree in parts.items():
      state[collection][part] = dict(state[collection][part], **tree)
  loaded = {part: sorted(tree) if part in PARTIAL_PARTS else "all"
            for part, tree in wanted["params"].items()}
  if jax.process_index() == 0:  # what a run starts from belongs on the console
    print(f"loaded {loaded} from {init_cfg.pretrain_dir} (step {step})",
          flush=True)
  return state, step
