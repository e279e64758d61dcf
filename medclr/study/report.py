"""Study tables and plots, built from the JSON rows file alone.

A row is one fine-tuned and evaluated cell (`kind` absent or 'cell'); a row
with `kind: 'pretrain'` records how an arm's pretraining ended (diagnostics,
or the guard's stop). The latest row of a key wins, so a re-run replaces it.
"""
import collections
import json
import pathlib


METRICS = ("dice", "auc_roc", "sensitivity", "specificity", "accuracy", "iou")
HUMAN_DICE = 0.788  # 2nd vs 1st observer on the DRIVE test set (data README)
DATA_CREDITS = (
    "Data: DRIVE (Staal et al., IEEE TMI 2004), STARE (Hoover et al., IEEE "
    "TMI 2000), HRF (Budai et al. 2013), fundus pool (Hughes Cano, Olivares "
    "Pinto & Thebault).")


def read_rows(jsonl):
  """All rows of a JSON-lines file, in order; [] if it does not exist."""
  path = pathlib.Path(jsonl)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines()
          if line.strip()]


def row_key(row):
  """(profile, arm, variant, dataset, k) of a cell row (rows written by hand
  before rows carried a profile read 'unrecorded')."""
  return (row.get("profile", "unrecorded"), row["arm"],
          row.get("variant", "default"), row.get("dataset", "drive"), row["k"])


def latest_cells(rows):
  """The latest cell row per (profile, arm, variant, dataset, k, seed)."""
  latest = {}
  for row in rows:
    if row.get("kind", "cell") == "cell":
      latest[row_key(row) + (row["seed"],)] = row
  return latest


def latest_pretrain(rows):
  """The latest pretraining row per arm."""
  return {row["arm"]: row for row in rows if row.get("kind") == "pretrain"}


def pretrain_seconds(rows):
  """Seconds each arm's pretraining took over all its attempts: a resumed
  study re-runs a finished pretraining, which only takes a few seconds."""
  total = {}
  for row in rows:
    if row.get("kind") == "pretrain" and row.get("seconds") is not None:
      total[row["arm"]] = round(total.get(row["arm"], 0.0) + row["seconds"],
                                1)
  return total


def mean_std(values):
  """Mean and population std of a non-empty list."""
  n = len(values)
  mean = sum(values) / n
  return mean, (sum((v - mean) ** 2 for v in values) / n) ** 0.5


def seed_groups(cells, where=None):
  """(profile, arm, variant, dataset, k) -> list of per-seed results.

  `where` None reads the in-domain test; a set name reads its cross rows.
  """
  groups = collections.defaultdict(list)
  for key, row in sorted(cells.items()):
    result = row if where is None else row.get("cross", {}).get(where)
    if result and "pooled" in result:
      groups[key[:-1]].append(result)
  return groups


def seed_table(cells, where=None):
  """Lines aggregating runs over seeds: mean, seed std, image std, pooled."""
  lines = []
  for (profile, arm, variant, dataset, k), results in seed_groups(
      cells, where).items():
    dice = [r["summary"]["dice"]["mean"] for r in results]
    image_std = [r["summary"]["dice"]["std"] for r in results]
    auc = [r["summary"]["auc_roc"]["mean"] for r in results]
    p_dice = [r["pooled"]["dice"] for r in results]
    p_auc = [r["pooled"]["auc_roc"] for r in results]
    (dm, ds), (am, as_) = mean_std(dice), mean_std(auc)
    test = dataset if where is None else where
    # One seed has no seed-to-seed spread: say so rather than print 0.
    seed_std = f"{ds:.4f}" if len(results) > 1 else "--"
    auc_cell = f"{am:.4f} +/- {as_:.4f}" if len(results) > 1 else f"{am:.4f}"
    lines.append(
        f"| {profile} | {arm} | {variant} | {dataset} -> {test} | {k} | "
        f"{len(results)} | **{dm:.4f}** | {seed_std} | "
        f"{sum(image_std) / len(image_std):.4f} | {auc_cell} | "
        f"{mean_std(p_dice)[0]:.4f} | {mean_std(p_auc)[0]:.4f} |")
  return lines


SEED_TABLE_HEAD = [
    "Dice: mean over seeds of the per-seed mean over test images; seed std: "
    "std of those per-seed means (decides whether arms differ); image std: "
    "mean over seeds of the std over test images; pooled: over all FOV "
    "pixels of the test split.", "",
    "| profile | arm | variant | train -> test | k | seeds | Dice | seed std "
    "| image std | AUC | pooled Dice | pooled AUC |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def run_lines(cells):
  """One Markdown line per run."""
  lines = [
      "| profile | arm | variant | set | k | seed | Dice | AUC-ROC | Sens | "
      "Spec | pooled Dice | pooled AUC | finetune s |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for key, row in sorted(cells.items()):
    profile, arm, variant, dataset, k, seed = key
    s = row["summary"]
    cell = lambda m: f"{s[m]['mean']:.4f} +/- {s[m]['std']:.4f}"
    pooled = row.get("pooled")
    pooled_cells = (f"{pooled['dice']:.4f} | {pooled['auc_roc']:.4f}"
                    if pooled else "-- | --")
    lines.append(
        f"| {profile} | {arm} | {variant} | {dataset} | {k} | {seed} | "
        f"{cell('dice')} | {cell('auc_roc')} | "
        f"{s['sensitivity']['mean']:.4f} | {s['specificity']['mean']:.4f} | "
        f"{pooled_cells} | {row['finetune_seconds']} |")
  return lines


def table_writer(rows):
  """The command a rows table names as its writer: the driver of its rows.

  Rows without a `kind` were written by `benchmarks.drive_study` (removed
  for `launch.study`, issue 26) or copied from such rows by
  `benchmarks.reevaluate`. A table of those rows alone keeps naming it, so
  the committed tables regenerate from their rows byte for byte.
  """
  if rows and all("kind" not in row for row in rows):
    return "python -m benchmarks.drive_study"
  return "python -m launch.study"


def write_table(jsonl, md):
  """Markdown: runs aggregated over seeds, then one line per run."""
  jsonl, md = pathlib.Path(jsonl), pathlib.Path(md)
  rows = read_rows(jsonl)
  cells = latest_cells(rows)
  crosses = sorted({name for row in cells.values()
                    for name in row.get("cross", {})})
  lines = [
      f"# {jsonl.stem}: few-label fundus segmentation (inside the FOV)", "",
      f"Written by `{table_writer(rows)}`. Human reference on DRIVE: 2nd "
      f"vs 1st observer Dice {HUMAN_DICE}. {DATA_CREDITS} Commands: see the "
      "`.jsonl` rows.",
      "", "## Over seeds", "", *SEED_TABLE_HEAD]
  lines += seed_table(cells)
  for name in crosses:
    lines += seed_table(cells, name)
  lines += ["", "## Runs", "", *run_lines(cells)]
  md.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------
# The study report (python -m launch.study).


def arm_k_stats(cells):
  """{arm: {k: (mean Dice, seed std, number of seeds)}}, arms in row order."""
  stats = {}
  for (_, arm, _, _, k), results in seed_groups(cells).items():
    mean, std = mean_std([r["summary"]["dice"]["mean"] for r in results])
    stats.setdefault(arm, {})[k] = (mean, std, len(results))
  order = list(dict.fromkeys(row["arm"] for row in cells.values()))
  return {arm: stats[arm] for arm in order if arm in stats}


def _cell_text(stat):
  mean, std, n = stat
  return f"{mean:.4f} +/- {std:.4f} ({n})" if n > 1 else f"{mean:.4f} (1)"


def dice_table(stats):
  ks = sorted({k for per_k in stats.values() for k in per_k})
  lines = ["| arm | " + " | ".join(f"k={k}" for k in ks) + " |",
           "|---" * (len(ks) + 1) + "|"]
  for arm, per_k in stats.items():
    lines.append(f"| {arm} | " + " | ".join(
        _cell_text(per_k[k]) if k in per_k else "--" for k in ks) + " |")
  return lines


def compare(stats, arm, other, k):
  """A sentence: does `arm` beat `other` at k by more than the seed spread?

  The spread is the larger of the two arms' seed stds; with one seed there
  is none, and the sentence says so.
  """
  if k not in stats.get(arm, {}) or k not in stats.get(other, {}):
    return None
  (m1, s1, n1), (m2, s2, n2) = stats[arm][k], stats[other][k]
  diff, spread = m1 - m2, max(s1, s2)
  if min(n1, n2) < 2:
    verdict = "not decidable (one seed)"
  elif abs(diff) <= spread:
    verdict = "within the seed spread: no difference shown"
  else:
    verdict = ("better by more than the seed spread" if diff > 0 else
               "worse by more than the seed spread")
  return (f"k={k}: {arm} {m1:.4f} vs {other} {m2:.4f} (difference "
          f"{diff:+.4f}, seed spread {spread:.4f}): {verdict}.")


def _base_name(arm):
  """'scratch (study_quick)' -> 'scratch': a baseline arm's own name."""
  return arm.split(" (")[0]


def _best(stats, arms, k):
  ranked = [a for a in arms if k in stats[a]]
  return max(ranked, key=lambda a: stats[a][k][0]) if ranked else None


def answers(stats, baselines=()):
  """The study's questions, answered from the rows.

  `baselines`: arms read from another study's rows (`baseline_stats`); each
  of this study's pretrained arms is also compared with the best of them.
  """
  lines = []
  scratch = next((a for a in stats if _base_name(a) == "scratch"), None)
  pretrained = [a for a in stats if _base_name(a) != "scratch"]
  if scratch and pretrained:
    for k in (1, 2):
      best = _best(stats, pretrained, k)
      if best:
        lines.append("- Best pretrained arm vs scratch, " +
                     (compare(stats, best, scratch, k) or ""))
  reference = [a for a in baselines if _base_name(a) != "scratch"]
  own = [a for a in pretrained if a not in baselines]
  for k in (1, 2):
    best_reference = _best(stats, reference, k)
    for arm in own if best_reference else ():
      sentence = compare(stats, arm, best_reference, k)
      if sentence:
        lines.append("- Against the best baseline arm, " + sentence)
  strong = [a for a in stats if a.split("@")[0] == "simclr_simclr_strong"]
  basic = [a for a in stats if a.split("@")[0] == "simclr_basic_medical"]
  for s_arm in strong[:1]:
    for b_arm in basic[:1]:
      for k in (1, 2):
        sentence = compare(stats, b_arm, s_arm, k)
        if sentence:
          lines.append("- basic_medical vs simclr_strong, " + sentence)
  return lines or ["- Not enough finished cells to answer yet."]


def pretrain_lines(rows):
  """One line per pretrained arm: status and collapse diagnostics."""
  lines = ["| arm | pool | status | seconds (all attempts) | loss / chance "
           "(first -> last) "
           "| embedding std rel | teacher entropy rel | probe acc (first -> "
           "last) |", "|---|---|---|---|---|---|---|---|"]
  fmt = lambda v: "--" if v is None else f"{v:.3f}"
  seconds = pretrain_seconds(rows)
  for arm, row in latest_pretrain(rows).items():
    diag = row.get("diagnostics") or {}
    first, last = diag.get("first", {}), diag.get("last", {})
    status = row["status"] + (f": {row['message']}" if row.get("message")
                              else "")
    lines.append(
        f"| {arm} | {row.get('pool')} | {status} | {seconds.get(arm, '--')} | "
        f"{fmt(first.get('loss_over_chance'))} -> "
        f"{fmt(last.get('loss_over_chance'))} | "
        f"{fmt(last.get('embedding_std_rel'))} | "
        f"{fmt(last.get('teacher_entropy_rel'))} | "
        f"{fmt(first.get('probe_accuracy'))} -> "
        f"{fmt(last.get('probe_accuracy'))} |")
  return lines


def baseline_stats(jsonl, baselines, ks):
  """Arms of another study's rows, shown beside this study's.

  Args:
    jsonl: this study's rows file; the other one lies beside it.
    baselines: `config.baselines`, '<rows stem>:<arm>,<arm>' (e.g.
      'study_quick:scratch,dino_weak@small'), '' for none.
    ks: the label budgets to keep.

  Returns:
    {'<arm> (<stem>)': {k: stat}} like `arm_k_stats`.
  """
  if not baselines:
    return {}
  stem, _, arms = baselines.partition(":")
  path = pathlib.Path(jsonl).with_name(f"{stem}.jsonl")
  if not path.exists() or not arms:
    raise FileNotFoundError(
        f"config.baselines={baselines!r}: expected '<rows stem>:<arm>,...' "
        f"naming a rows file beside {pathlib.Path(jsonl).name}; {path.name} "
        + ("has no arms named" if path.exists() else "does not exist"))
  stats = arm_k_stats(latest_cells(read_rows(path)))
  out = {}
  for arm in arms.split(","):
    if arm not in stats:
      raise FileNotFoundError(
          f"config.baselines: arm {arm!r} has no cells in {path.name} "
          f"(arms there: {sorted(stats)})")
    out[f"{arm} ({stem})"] = {k: v for k, v in stats[arm].items() if k in ks}
  return out


def write_study_report(jsonl, md, baselines=""):
  """Markdown report and plots of a study, from its rows file alone (and,
  with `baselines`, the named arms of another rows file beside it)."""
  jsonl, md = pathlib.Path(jsonl), pathlib.Path(md)
  rows = read_rows(jsonl)
  cells = latest_cells(rows)
  own = arm_k_stats(cells)
  ks = {k for per_k in own.values() for k in per_k}
  base = baseline_stats(jsonl, baselines, ks)
  stats = {**base, **own}
  # Imported here: matplotlib is half a second of every study's start-up.
  # pylint: disable-next=g-import-not-at-top
  from medclr.study import plots as study_plots
  plots = study_plots.plot_study(
      stats, md.with_name(md.stem + "_dice_vs_k.png"),
      md.with_name(md.stem + "_dice_vs_strength.png"), HUMAN_DICE)
  plots += study_plots.plot_probe(latest_pretrain(rows),
                                  md.with_name(md.stem + "_probe.png"))
  lines = [
      f"# {jsonl.stem}: does pretraining help few-label segmentation?", "",
      "Written by `python -m launch.study` from the rows in "
      f"`{jsonl.name}` alone. Test Dice inside the FOV, mean over seeds of "
      "the per-seed mean over test images, +/- the seed-to-seed std (number "
      f"of seeds). Human reference on DRIVE: {HUMAN_DICE}. {DATA_CREDITS}",
      *([f"Arms marked `(<name>)` are baselines read from `<name>.jsonl` "
         f"beside it (`{baselines}`)."] if base else []),
      "", "## Answers", "", *answers(stats, tuple(base)), "",
      "## Dice by arm and label budget", "", *dice_table(stats), ""]
  lines += [f"![{p.stem}]({p.name})" for p in plots]
  lines += ["", "## Pretraining", "",
            "loss / chance near 1: at chance; embedding std rel: std of the "
            "embeddings over its step-0 value (near 0: collapsed); teacher "
            "entropy rel: DINO's teacher entropy over ln K (1: uniform); "
            "status `stopped`: the collapse guard ended the run and its "
            "cells were skipped.", "", *pretrain_lines(rows), "",
            "## Over seeds", "", *SEED_TABLE_HEAD, *seed_table(cells), "",
            "## Runs", "", *run_lines(cells)]
  md.write_text("\n".join(lines) + "\n")
