"""The study command: arms and cells, resume from rows, report from rows."""
import filecmp
import importlib
import json
import shutil
import subprocess
import sys

import nbclient
import nbformat
import pytest

from configs import study_drive
from configs import study_recipe
from conftest import REPO_ROOT
from medclr.study import grid
from medclr.study import report
from medclr.study import runner


def test_parse_arm_and_cells():
  pools = {"large": "a:train", "small": "b:train"}
  arm = grid.parse_arm("simclr_simclr_strong*0.5@large", pools)
  assert (arm.base, arm.strength, arm.pool) == ("simclr_simclr_strong", 0.5,
                                                "large")
  assert grid.arm_pretrain_config(arm.base) == (
      "simclr", "preset=simclr_strong", [])
  assert not grid.parse_arm("scratch").pretrained
  arms = grid.parse_arms("scratch,dino_weak@small", pools)
  assert grid.cells(arms, [1, 2, 20], [0, 1, 2], [1, 2]) == [
      ("scratch", 1, 0), ("scratch", 1, 1), ("scratch", 1, 2),
      ("scratch", 2, 0), ("scratch", 2, 1), ("scratch", 2, 2),
      ("scratch", 20, 0), ("dino_weak@small", 1, 0), ("dino_weak@small", 1, 1),
      ("dino_weak@small", 1, 2), ("dino_weak@small", 2, 0),
      ("dino_weak@small", 2, 1), ("dino_weak@small", 2, 2),
      ("dino_weak@small", 20, 0)]
  for bad, message in [("simclr_basic_medical@huge", "unknown pool 'huge'"),
                       ("simclr_basic_medical*x@large", "'x' is not a number"),
                       ("scratch@large", "scratch pretrains nothing"),
                       ("simclr@large", "expected scratch, <method>_<preset>"),
                       ("scratch,scratch", "lists an arm twice")]:
    with pytest.raises(ValueError, match=message):
      grid.parse_arms(bad, pools)


def test_best_arm_is_the_best_pretrained_one():
  best = grid.parse_arm("best@small")
  resolved = grid.resolve_best(best, {"scratch": 0.9,
                                      "mocov2_mocov2@large": 0.7,
                                      "simclr_simclr_strong*0.5@large": 0.8})
  assert resolved.name == "simclr_simclr_strong*0.5@small"
  assert (resolved.base, resolved.strength, resolved.pool) == (
      "simclr_simclr_strong", 0.5, "small")
  with pytest.raises(ValueError, match="needs finished pretrained arms"):
    grid.resolve_best(best, {"scratch": 0.9})


def test_pretrain_command_carries_pool_and_strength():
  arm = grid.parse_arm("simclr_simclr_strong*0.5@large")
  cmd = grid.pretrain_command(arm, "quick", "/w/p", "/d", "x:train,y:train",
                              ["--config.guard.mode=stop"])
  assert "--config=configs/pretrain_simclr.py:quick,preset=simclr_strong" in cmd
  assert "--config.data.sources=x:train,y:train" in cmd
  assert "--config.augment.strength=0.5" in cmd
  full = grid.pretrain_command(grid.parse_arm("dino_weak@large"), "full",
                               "/w/p", "/d", "x:train")
  assert "--config=configs/pretrain_dino.py:,multicrop=weak" in full


def test_study_configs_name_real_arms_and_pools():
  for module in (study_drive, study_recipe):
    for arg in ("quick", "full", "smoke"):
      config = module.get_config(arg)
      arms = grid.parse_arms(config.arms, config.pools)
      assert arms[0].name == "scratch"
      runner.check_config(config)
  with pytest.raises(ValueError, match="exactly one of smoke, quick, full"):
    study_drive.get_config("quick,full")


def test_named_arms_name_real_configs():
  """Every named arm's config file exists and takes its arguments."""
  assert grid.arm_pretrain_config("scratch") is None
  assert grid.arm_pretrain_config("simclr_basic_medical") == (
      "simclr", "preset=basic_medical", [])
  for arm in grid.NAMED_ARMS:
    stem, config_args, extra = grid.arm_pretrain_config(arm)
    module = importlib.import_module(f"configs.pretrain_{stem}")
    config = module.get_config(f"quick,{config_args}")
    assert config.num_steps > 0
    for flag in extra:
      key, value = flag.removeprefix("--config.").split("=")
      section, field = key.split(".")
      assert str(config[section][field]) != value  # the flag changes it


def test_recipe_config_keeps_drive_study_defaults(tmp_path):
  """configs/study_recipe.py runs what benchmarks.drive_study ran: the
  recipe as it is, every seed at every k, unpooled arms on DRIVE + HRF,
  rows and their table in drive_study.{jsonl,md}."""
  config = study_recipe.get_config("quick")
  config.k, config.seeds = "2,20", "0,1,2"
  study = runner.Study(config, tmp_path / "w", tmp_path,
                       runner.results_path(config))
  assert study.config.finetune_overrides == ""
  assert grid.cells(study.arms, study.ks, study.seeds, study.all_seeds_k)[
      :6] == [("scratch", k, s) for k in (2, 20) for s in (0, 1, 2)]
  arm = grid.parse_arm("simclr_basic_medical")
  assert config.pools[study.pool(arm)] == "drive:train,hrf:train"
  assert study.pool(grid.parse_arm("dino_weak@small")) == "small"
  assert runner.results_path(config) == (
      REPO_ROOT / "benchmarks" / "results" / "drive_study.jsonl")
  assert runner.results_path(study_recipe.get_config("smoke")).name == (
      "drive_study_smoke.jsonl")
  config.variant = "fov540"
  assert study.cell_dir(arm, 2, 1) == (
      tmp_path / "w" / "finetune_simclr_basic_medical_fov540_drive_k2_s1")
  for key, value, message in [
      ("cross", "stare,hrf", "config.cross: 'hrf' is not a labelled set"),
      ("dataset", "fundus_pool", "'fundus_pool' is not a labelled set"),
      ("report", "html", "config.report='html': expected one of study"),
      ("default_pool", "large", "default_pool='large' is not in")]:
    bad = study_recipe.get_config("quick")
    bad[key] = value
    with pytest.raises(ValueError, match=message):
      runner.Study(bad, tmp_path / "w", tmp_path, tmp_path / "rows.jsonl")


def test_an_existing_cell_workdir_is_restarted_refused_or_continued(
    tmp_path):
  """A fine-tuning workdir without a row may be another study's, which
  launch.finetune would resume under this cell's config."""
  old = tmp_path / "finetune_scratch_drive_k2_s0"
  runner.ready_cell_dir(old, "refuse", "rows.jsonl")  # absent: fine
  (old / "checkpoints").mkdir(parents=True)
  with pytest.raises(FileExistsError,
                     match=r"finetune_scratch_drive_k2_s0 exists but "
                     r"rows.jsonl has no row.*existing_cells=restart"):
    runner.ready_cell_dir(old, "refuse", "rows.jsonl")
  runner.ready_cell_dir(old, "continue", "rows.jsonl")
  assert (old / "checkpoints").is_dir()
  runner.ready_cell_dir(old, "restart", "rows.jsonl")
  assert not old.exists()


def _cell(arm, k, seed, dice):
  summary = {m: {"mean": 0.9, "std": 0.01} for m in report.METRICS}
  summary["dice"] = {"mean": dice, "std": 0.02}
  return {"kind": "cell", "profile": "quick", "arm": arm, "variant": "default",
          "dataset": "drive", "k": k, "seed": seed, "summary": summary,
          "pooled": {m: 0.5 for m in report.METRICS}, "finetune_seconds": 1.0}


def test_rows_table_aggregates_over_seeds(tmp_path):
  """Seed std is the std of the per-seed means (not of images), and pooled
  metrics and cross-dataset rows reach the table."""

  def row(seed, dice, image_std):
    summary = {m: {"mean": 0.9, "std": 0.01} for m in report.METRICS}
    summary["dice"] = {"mean": dice, "std": image_std}
    pooled = {m: 0.5 for m in report.METRICS}
    return {"profile": "quick", "arm": "scratch", "variant": "v",
            "dataset": "drive", "k": 2, "seed": seed, "summary": summary,
            "pooled": pooled, "finetune_seconds": 1.0,
            "cross": {"stare": {"summary": summary, "pooled": pooled}}}

  jsonl, md = tmp_path / "s.jsonl", tmp_path / "s.md"
  rows = [row(0, 0.70, 0.05), row(1, 0.80, 0.07), row(1, 0.90, 0.01)]
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
  report.write_table(jsonl, md)
  text = md.read_text()
  # Seed 1's latest row (0.90) replaces its first: mean 0.80, seed std 0.10,
  # image std the mean of 0.05 and 0.01.
  assert "| 2 | **0.8000** | 0.1000 | 0.0300 |" in text
  assert "drive -> stare" in text
  # Rows without a `kind` are benchmarks.drive_study's; once launch.study
  # adds one, the table names launch.study.
  assert "Written by `python -m benchmarks.drive_study`." in text
  jsonl.write_text(jsonl.read_text() + json.dumps(
      {**row(2, 0.8, 0.01), "kind": "cell"}) + "\n")
  report.write_table(jsonl, md)
  assert "Written by `python -m launch.study`." in md.read_text()


# Rows tables committed by benchmarks.drive_study (and reevaluate).
COMMITTED_TABLES = ("drive_study", "cross_camera", "ablation",
                    "decoder_pretraining", "finetune_from_pretrained")


def test_committed_rows_regenerate_their_tables_byte_for_byte(tmp_path):
  """launch.study's rows-table report, from each committed rows file alone,
  writes the committed table unchanged."""
  results = REPO_ROOT / "benchmarks" / "results"
  config = study_recipe.get_config("quick")
  for stem in COMMITTED_TABLES:
    jsonl = tmp_path / f"{stem}.jsonl"
    shutil.copy(results / jsonl.name, jsonl)
    runner.write_report(config, jsonl)
    assert filecmp.cmp(jsonl.with_suffix(".md"), results / f"{stem}.md",
                       shallow=False), f"{stem}.md differs"


def test_report_is_built_from_rows_alone(tmp_path):
  rows = [_cell("scratch", 2, s, d) for s, d in enumerate((0.70, 0.72, 0.74))]
  rows += [_cell("simclr_basic_medical@large", 2, s, d)
           for s, d in enumerate((0.80, 0.81, 0.82))]
  rows += [_cell("simclr_simclr_strong@large", 2, s, d)
           for s, d in enumerate((0.71, 0.75, 0.79))]
  rows.append({"kind": "pretrain", "profile": "quick",
               "arm": "dino_weak@large", "pool": "large", "status": "stopped",
               "message": "step 90: teacher entropy at ln K",
               "seconds": None, "diagnostics": {}})
  # A finished pretraining, then the near-instant re-run of a resumed study.
  rows += [{"kind": "pretrain", "profile": "quick", "arm": "mocov2@large",
            "pool": "large", "status": "done", "seconds": s,
            "diagnostics": {}} for s in (400.0, 6.2)]
  # A hand-written row of an older format, without a profile.
  rows.append({k: v for k, v in _cell("mocov2@large", 2, 0, 0.6).items()
               if k != "profile"})
  jsonl = tmp_path / "study_quick.jsonl"
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
  md = tmp_path / "study_quick.md"
  report.write_study_report(jsonl, md)
  text = md.read_text()
  assert "| unrecorded | mocov2@large |" in text
  # basic_medical: mean 0.81, seed std 0.0082 vs scratch 0.72 +/- 0.0163.
  assert "| simclr_basic_medical@large | 0.8100 +/- 0.0082 (3) |" in text
  assert ("k=2: simclr_basic_medical@large 0.8100 vs scratch 0.7200 "
          "(difference +0.0900, seed spread 0.0163): better by more than "
          "the seed spread.") in text
  # strong vs basic: 0.75 +/- 0.0327; the difference 0.06 exceeds it.
  assert ("basic_medical vs simclr_strong, k=2: simclr_basic_medical@large "
          "0.8100 vs simclr_simclr_strong@large 0.7500") in text
  assert "stopped: step 90: teacher entropy at ln K" in text
  assert "| mocov2@large | large | done | 406.2 |" in text
  assert (tmp_path / "study_quick_dice_vs_k.png").stat().st_size > 0


def test_report_shows_baseline_arms_of_another_rows_file(tmp_path):
  baseline = [_cell("scratch", k, s, d) for k in (1, 2, 20)
              for s, d in enumerate((0.70, 0.72, 0.74))]
  baseline += [_cell("dino_weak@small", 2, s, d)
               for s, d in enumerate((0.75, 0.76, 0.77))]
  (tmp_path / "study_quick.jsonl").write_text(
      "".join(json.dumps(r) + "\n" for r in baseline))
  own = [_cell("macl@large", 2, s, d) for s, d in enumerate((0.80, 0.81,
                                                             0.82))]
  jsonl = tmp_path / "study_decoder.jsonl"
  jsonl.write_text("".join(json.dumps(r) + "\n" for r in own))
  md = tmp_path / "study_decoder.md"
  report.write_study_report(jsonl, md,
                            "study_quick:scratch,dino_weak@small")
  text = md.read_text()
  # Only the budgets of this study (k=2), named after the file they are from.
  assert "| scratch (study_quick) | 0.7200 +/- 0.0163 (3) |" in text
  assert "k=20" not in text
  assert ("Best pretrained arm vs scratch, k=2: macl@large 0.8100 vs "
          "scratch (study_quick) 0.7200") in text
  assert ("Against the best baseline arm, k=2: macl@large 0.8100 vs "
          "dino_weak@small (study_quick) 0.7600 (difference +0.0500, seed "
          "spread 0.0082): better by more than the seed spread.") in text
  with pytest.raises(FileNotFoundError, match="'mocov2@large' has no cells"):
    report.write_study_report(jsonl, md, "study_quick:mocov2@large")
  with pytest.raises(FileNotFoundError, match="study_x.jsonl does not exist"):
    report.write_study_report(jsonl, md, "study_x:scratch")


def test_decoder_and_semi_supervised_arms_parse():
  pools = {"large": "x:train"}
  macl = grid.parse_arm("macl@large", pools)
  cmd = grid.pretrain_command(macl, "quick", "/w/p", "/d", "x:train")
  # A 2D pool: the pool's images, not the config's volume set.
  assert "--config=configs/pretrain_macl.py:quick,volumes=0" in cmd
  assert "--config.data.sources=x:train" in cmd
  for name in ("macl", "dira", "chaitanya_local"):
    assert grid.parse_arm(name).finetune_flags == [
        "--config.init.load=encoder,decoder"]
  local = grid.parse_arm("chaitanya_local@large", pools)
  assert local.stage_one == grid.parse_arm("simclr_simclr_strong*0.25@large")
  assert grid.parse_arm("dira@large").stage_one is None
  arco = grid.parse_arm("arco")
  assert not arco.pretrained
  assert arco.finetune_flags == ["--config.semi.mode=arco",
                                 "--config.semi.rampup_steps=100"]
  with pytest.raises(ValueError, match="arco pretrains nothing"):
    grid.parse_arm("arco@large", pools)


def test_volume_arms_train_on_a_volume_pool_only():
  """A method reading volumes (its class's host_pipeline) keeps its config's
  volume set on a 2D pool, and takes a pool of volume sets."""
  for name in ("chaitanya_gd", "pcl", "macl_volumes"):
    arm = grid.parse_arm(name)
    assert grid.method_of(arm.base).host_pipeline == "volumes"
    on_2d = grid.pretrain_command(arm, "quick", "/w/p", "/d", "x:train")
    assert not [f for f in on_2d if f.startswith("--config.data.sources")]
    on_em = grid.pretrain_command(arm, "quick", "/w/p", "/d",
                                  "isbi_em_stack:train")
    assert "--config.data.sources=isbi_em_stack:train" in on_em
  assert grid.parse_arm("pcl").finetune_flags == []


def _run_study(workdir, results,
               arms="scratch,chaitanya_local@small", extra=()):
  cmd = [sys.executable, "-m", "launch.study",
         "--config=configs/study_drive.py:smoke", f"--workdir={workdir}",
         f"--results={results}", "--config.k=1", "--config.seeds=0",
         "--config.all_seeds_k=", f"--config.arms={arms}", *extra]
  result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


# The smoke study is also an ablation row evaluated across sets: a variant
# (its fine-tuning and evaluation flags) and a second labelled set.
SMOKE_VARIANT = ("--config.variant=constant_lr",
                 "--config.finetune_overrides=--config.optim.schedule=constant",
                 "--config.eval_overrides=--tta=none",
                 "--config.cross=phantom_cross")


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
  """A real two-cell study on the phantom: (workdir, rows file, stdout).

  Its arms are scratch and a two-stage one (Chaitanya et al.'s decoder
  stage after its SimCLR stage), so one study covers both kinds.
  """
  root = tmp_path_factory.mktemp("study")
  results = root / "rows.jsonl"
  out = _run_study(root / "w", results, extra=SMOKE_VARIANT)
  return root / "w", results, out


@pytest.mark.slow  # A real study on the phantom, then a resumed one.
def test_study_resumes_without_redoing_cells(smoke_study, tmp_path):
  workdir, first, out = smoke_study
  rows = report.read_rows(first)
  assert [(r["kind"], r["arm"]) for r in rows] == [
      ("cell", "scratch"), ("pretrain", "simclr_simclr_strong*0.25@small"),
      ("pretrain", "chaitanya_local@small"),
      ("cell", "chaitanya_local@small")]
  assert "[study] 2/2 cells done" in out
  # The probe ran at step 0 and at the end of pretraining.
  curve = rows[1]["diagnostics"]["probe_curve"]
  assert [step for step, _ in curve] == [0, 1, 2]
  assert all(0 <= accuracy <= 1 for _, accuracy in curve)
  # Without the scratch cell's row, a second run redoes that cell alone,
  # without pretraining again (the arm's cells are all done).
  results = tmp_path / "rows.jsonl"
  results.write_text("".join(json.dumps(r) + "\n" for r in rows[1:]))
  out = _run_study(workdir, results, extra=SMOKE_VARIANT)
  assert "launch.pretrain" not in out and out.count("launch.finetune") == 1
  again = report.read_rows(results)
  assert [(r["kind"], r["arm"]) for r in again] == [
      ("pretrain", "simclr_simclr_strong*0.25@small"),
      ("pretrain", "chaitanya_local@small"),
      ("cell", "chaitanya_local@small"), ("cell", "scratch")]
  # Rows hold $WORK / $DATA, never this machine's paths.
  assert str(workdir) not in first.read_text() + results.read_text()
  assert results.with_suffix(".md").exists()


@pytest.mark.slow  # Reads the smoke study's rows.
def test_two_stage_arm_pretrains_its_first_stage_and_loads_the_decoder(
    smoke_study):
  _, results, _ = smoke_study
  rows = report.read_rows(results)[1:]
  assert [(r["kind"], r["arm"], r.get("status")) for r in rows] == [
      ("pretrain", "simclr_simclr_strong*0.25@small", "done"),
      ("pretrain", "chaitanya_local@small", "done"),
      ("cell", "chaitanya_local@small", None)]
  # The decoder stage starts from the first stage's checkpoint, and its
  # cell loads the decoder it trained (the arm's fine-tuning flags).
  assert ("--config.init.pretrain_dir=$WORK/pretrain_simclr_simclr_strong-"
          "x0.25-on-small") in rows[1]["command"]
  assert "--config.init.load=encoder,decoder" in " ".join(rows[2]["commands"])


@pytest.mark.slow  # Reads the smoke study's rows.
def test_study_runs_a_variant_and_evaluates_across_sets(smoke_study,
                                                        tmp_path):
  workdir, results, out = smoke_study
  cell = report.read_rows(results)[0]
  assert (cell["arm"], cell["variant"], cell["schedule"]) == (
      "scratch", "constant_lr", "constant")
  # The cell's workdir carries its variant and labelled set; every
  # evaluation takes the variant's flags; the cross set has its metrics.
  ft_dir = "$WORK/finetune_scratch_constant_lr_phantom_k1_s0"
  finetune, in_domain, across = cell["commands"]
  assert f"--workdir={ft_dir} " in finetune
  assert "--config.optim.schedule=constant" in finetune
  assert in_domain == f"python -m launch.evaluate --workdir={ft_dir} --tta=none"
  assert across == in_domain + " --dataset=phantom_cross"
  assert (workdir / ft_dir.removeprefix("$WORK/") / "eval_phantom_cross" /
          "metrics.json").is_file()
  assert cell["cross"]["phantom_cross"]["num_test_images"] == 2
  assert cell["cross"]["phantom_cross"]["summary"] != cell["summary"]
  assert "[study] scratch constant_lr k=1 seed=0: Dice " in out
  # The same rows as a rows table (configs/study_recipe.py): in domain and
  # across, by variant.
  copy = tmp_path / "rows.jsonl"
  shutil.copy(results, copy)
  runner.write_report(study_recipe.get_config("smoke"), copy)
  table = copy.with_suffix(".md").read_text()
  assert "Written by `python -m launch.study`." in table
  assert "| smoke | scratch | constant_lr | phantom -> phantom_cross | 1 |" in (
      table)


@pytest.mark.slow  # Executes the notebook on the smoke study's rows.
def test_augmentation_study_notebook_executes(smoke_study, monkeypatch):
  _, results, _ = smoke_study
  path = REPO_ROOT / "notebooks" / "augmentation_study.ipynb"
  notebook = nbformat.read(path, as_version=4)
  monkeypatch.setenv("MEDCLR_STUDY_ROWS", str(results))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  nbclient.NotebookClient(
      notebook, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(path.parent)}}).execute()
  outputs = [out for cell in notebook.cells if cell.cell_type == "code"
             for out in cell.get("outputs", [])]
  assert not [out for out in outputs if out.output_type == "error"]
  text = "".join(out.get("text", "") + str(out.get("data", {}).get(
      "text/markdown", "")) for out in outputs)
  assert "rows.jsonl: 2 cells, 2 pretrained arms" in text
  assert "| chaitanya_local@small |" in text
  images = [out for out in outputs if "image/png" in out.get("data", {})]
  # Dice vs k, the probe curve, and the preset preview.
  assert len(images) == 3


def test_best_arm_waits_for_every_other_arm(tmp_path):
  config = study_drive.get_config("quick")
  config.arms = "scratch,simclr_basic_medical@large,best@small"
  config.k, config.seeds, config.all_seeds_k = "2", "0", ""
  results = tmp_path / "rows.jsonl"
  study = runner.Study(config, tmp_path / "w", tmp_path, results)

  def write(*rows):
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))

  # Only scratch has finished: best@small stays unresolved (no error).
  write(_cell("scratch", 2, 0, 0.7))
  assert study.resolved_arms()[-1].name == "best@small"
  write(_cell("scratch", 2, 0, 0.7),
        _cell("simclr_basic_medical@large", 2, 0, 0.8))
  assert study.resolved_arms()[-1].name == "simclr_basic_medical@small"


def test_em_study_prepares_its_pool_and_held_out_split(shared_data, tmp_path):
  """configs/study_em.py through the study's own prepare step, on the real
  ISBI 2012 stacks: the unlabelled test stack becomes the volume pool, the
  labelled stack 20 training and 10 test sections; no labelled section is
  in the pool."""
  from configs import study_em  # pylint: disable=g-import-not-at-top
  from medclr.data import sources  # pylint: disable=g-import-not-at-top
  from medclr.study import sets  # pylint: disable=g-import-not-at-top
  config = study_em.get_config("quick")
  arms = grid.parse_arms(config.arms, config.pools)
  assert [a.name for a in arms] == ["scratch", "macl_volumes@em"]
  command = grid.pretrain_command(arms[1], "quick", "/w/p", "/d",
                                  config.pools["em"])
  assert "--config=configs/pretrain_macl.py:quick," in command
  assert "--config.data.sources=isbi_em_stack:train" in command
  data_dir = tmp_path / "data"
  sets.prepare_data(config, shared_data, data_dir, tmp_path / "log")
  sizes = {split: len(sources.open_split(data_dir, "isbi_em", split))
           for split in ("train", "test")}
  assert sizes == {"train": 20, "test": 10}
  pool = sources.open_split(data_dir, "isbi_em_stack", "train")
  assert len(pool) == 30
  # The pool comes from the unlabelled stack only (its slices are
  # renormalised, so compare the commands the runner ran, not pixels).
  volume_lines = [line for line in (tmp_path / "log").read_text().splitlines()
                  if "launch.prepare_volumes" in line]
  assert len(volume_lines) == 1
  assert volume_lines[0].endswith(
      f"--manual_dir={shared_data / 'isbi2012_em' / 'test' / 'image'}")
