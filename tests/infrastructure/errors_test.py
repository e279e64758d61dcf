"""Bad input fails before training, with a message naming the file or key."""
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, smoke_config
from medclr import checkpointing
from medclr import errors
from medclr.data import readers
from medclr.train import finetune
from medclr.train import pretrain


def test_missing_data_dir_names_it(tmp_path):
  missing = str(tmp_path / "nowhere")
  config = smoke_config("pretrain_simclr", missing,
                        **{"data.sources": "drive:train"})
  with pytest.raises(readers.DataError, match="nowhere"):
    pretrain.train_and_evaluate(config, str(tmp_path / "work"))


def test_unprepared_dataset_says_how_to_prepare(tmp_path, phantom_data_dir):
  config = smoke_config("pretrain_simclr", phantom_data_dir,
                        **{"data.sources": "phantom:train,drive:train"})
  with pytest.raises(readers.DataError, match="launch.prepare"):
    pretrain.train_and_evaluate(config, str(tmp_path / "work"))


def test_pretrain_dir_without_checkpoint(tmp_path, phantom_data_dir):
  empty = tmp_path / "empty_pretrain"
  empty.mkdir()
  config = smoke_config("finetune_unet", phantom_data_dir,
                        **{"init.pretrain_dir": str(empty)})
  with pytest.raises(checkpointing.CheckpointError, match="empty_pretrain"):
    finetune.train_and_evaluate(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("override, message", [
    # A wider level 2 than the checkpoint's.
    ({"model.widths": (8, 16, 64)}, r"encoder/level2.*shape"),
    # SimCLR saves no decoder: asking for one names the missing parameters.
    ({"init.load": "encoder,decoder"},
     r"params/decoder/\S+: missing in checkpoint"),
    # The smoke encoder has 3 levels; 2 levels match its first two in shape.
    ({"model.widths": (8, 16)}, r"encoder/level2.*not in this model"),
])
def test_pretrained_parts_that_do_not_fit_are_named(
    tmp_path, phantom_data_dir, pretrained_dir, override, message):
  config = smoke_config("finetune_unet", phantom_data_dir,
                        **{"init.pretrain_dir": pretrained_dir, **override})
  with pytest.raises(checkpointing.CheckpointError, match=message):
    finetune.train_and_evaluate(config, str(tmp_path / "work"))


def _finished_copy(finished, tmp_path):
  """A copy of a session's finished smoke run (conftest), to resume."""
  return str(shutil.copytree(finished, tmp_path / "work"))


def _finetune_config(phantom_data_dir, pretrained_dir, **overrides):
  """The config of conftest's `finetuned_dir`, with `overrides`."""
  return smoke_config("finetune_unet", phantom_data_dir, **{
      "init.pretrain_dir": pretrained_dir, **overrides})


def test_resume_under_another_config_is_refused(tmp_path, phantom_data_dir,
                                                pretrained_dir,
                                                finetuned_dir):
  workdir = _finished_copy(finetuned_dir, tmp_path)
  labeled = (tmp_path / "work" / "labeled.json").read_text()
  changed = _finetune_config(phantom_data_dir, pretrained_dir, **{
      "optim.learning_rate": 0.5, "data.label_seed": 3})
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"another config \(data.label_seed: 0 -> 3; "
                     r"optim.learning_rate: 0.001 -> 0.5\)"):
    finetune.train_and_evaluate(changed, workdir)
  # Nothing of the refused run reached the workdir.
  assert (tmp_path / "work" / "labeled.json").read_text() == labeled
  # More steps is a resume, not another run.
  longer = _finetune_config(phantom_data_dir, pretrained_dir, num_steps=3)
  assert finetune.train_and_evaluate(longer, workdir)


def test_resume_accepts_fields_added_since_the_checkpoint(
    tmp_path, phantom_data_dir, pretrained_dir, finetuned_dir, caplog):
  # A run written before `data.patch_sampling` existed: its config.json
  # lacks the field. Resuming under a newer medclr warns and goes on; a
  # changed value of an old field is still refused.
  workdir = tmp_path / "work"
  _finished_copy(finetuned_dir, tmp_path)
  saved = json.loads((workdir / "config.json").read_text())
  del saved["data"]["patch_sampling"]
  (workdir / "config.json").write_text(json.dumps(saved))
  longer = _finetune_config(phantom_data_dir, pretrained_dir, num_steps=3)
  with caplog.at_level(logging.WARNING):
    assert finetune.train_and_evaluate(longer, str(workdir))
  assert "data.patch_sampling='uniform'" in caplog.text
  changed = _finetune_config(phantom_data_dir, pretrained_dir, num_steps=4,
                             **{"data.label_seed": 3})
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"data.label_seed: 0 -> 3\)"):
    finetune.train_and_evaluate(changed, str(workdir))


def test_resume_of_a_run_saved_before_keys_were_renamed(tmp_path,
                                                       phantom_data_dir,
                                                       pretrained_dir):
  # Its config.json names data.crop_site and contrastive_crop by their old
  # names (issue 26); it resumes under the new ones, and a changed value is
  # still refused under its new name.
  workdir = tmp_path / "work"
  _finished_copy(pretrained_dir, tmp_path)
  saved = json.loads((workdir / "config.json").read_text())
  saved["crop"] = saved.pop("contrastive_crop")
  saved["data"]["crops"] = saved["data"].pop("crop_site")
  (workdir / "config.json").write_text(json.dumps(saved))
  changed = smoke_config("pretrain_simclr", phantom_data_dir, num_steps=3,
                         **{"contrastive_crop.alpha": 0.5})
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"another config \(contrastive_crop.alpha: "
                     r"0.6 -> 0.5\)"):
    pretrain.train_and_evaluate(changed, str(workdir))
  longer = smoke_config("pretrain_simclr", phantom_data_dir, num_steps=3)
  assert pretrain.train_and_evaluate(longer, str(workdir))
  assert checkpointing.latest_complete_step(str(workdir)) == 3


def test_divergence_stops_before_a_bad_checkpoint(tmp_path, phantom_data_dir):
  # A NaN learning rate makes every parameter NaN in the first update.
  # Logged steps stop on the non-finite metrics; a checkpoint step that is
  # not logged (log_every 2) stops on the parameters, before saving them.
  for log_every, cause in ((1, "non-finite lr=nan at step 1"),
                           (2, "non-finite parameters after step 1")):
    workdir = tmp_path / f"log{log_every}"
    config = smoke_config("finetune_unet", phantom_data_dir,
                          log_every=log_every,
                          **{"optim.learning_rate": float("nan")})
    with pytest.raises(errors.Diverged,
                       match=cause + r".*no checkpoint was saved yet"):
      finetune.train_and_evaluate(config, str(workdir))
    assert not list((workdir / "checkpoints").glob("[0-9]*"))


def test_contrastive_crop_needs_a_two_view_method(tmp_path, phantom_data_dir):
  config = smoke_config("pretrain_dino", phantom_data_dir)
  ccrop = smoke_config("pretrain_simclr", phantom_data_dir).contrastive_crop
  ccrop.mode = "ccrop"
  config.contrastive_crop = ccrop
  with pytest.raises(errors.ConfigError, match="makes its own host crops"):
    pretrain.train_and_evaluate(config, str(tmp_path / "work"))


def test_bad_config_value_names_key(tmp_path, phantom_data_dir):
  config = smoke_config("pretrain_simclr", phantom_data_dir,
                        **{"augment.preset": "nope"})
  with pytest.raises(errors.ConfigError, match="config.augment"):
    pretrain.train_and_evaluate(config, str(tmp_path / "work"))
  config = smoke_config("pretrain_simclr", phantom_data_dir, batch_size=6)
  with pytest.raises(ValueError, match="config.batch_size=6"):
    pretrain.train_and_evaluate(config, str(tmp_path / "work2"))


@pytest.mark.parametrize("override,message", [
    ({"init.freeze": "encoder,neck"}, r"config.init.freeze='encoder,neck'"),
    ({"init.freeze_steps": -2}, r"config.init.freeze_steps=-2"),
    ({"optim.ema_decay": 1.0}, r"config.optim.ema_decay=1.0"),
])
def test_bad_finetuning_values_name_their_key(override, message, tmp_path,
                                              phantom_data_dir):
  config = smoke_config("finetune_unet", phantom_data_dir, **override)
  with pytest.raises(errors.ConfigError, match=message):
    finetune.train_and_evaluate(config, str(tmp_path / "work"))
  assert not (tmp_path / "work").exists()


def test_unknown_config_key_on_command_line(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "launch.pretrain",
       "--config=configs/pretrain_simclr.py:smoke",
       f"--workdir={tmp_path / 'w'}", "--config.optim.learning_rat=0.1"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode != 0
  assert "learning_rat" in result.stderr
  assert not (tmp_path / "w").exists()


def test_unknown_config_argument_is_one_line_without_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "launch.finetune",
       "--config=configs/finetune_unet.py:quick,bogus",
       f"--workdir={tmp_path / 'w'}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 1
  assert result.stderr.strip() == (
      "error: --config=configs/finetune_unet.py:quick,bogus: unknown config "
      "argument 'bogus' in 'quick,bogus'; known: ['demo', 'quick', 'smoke']")
  assert not (tmp_path / "w").exists()
