"""Training budgets in optimizer steps, validation-based early stopping, and the teacher check that reads
what they record."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, load_pipeline
from common.engines import budget_epochs, read_training_record


def _bundle(bundle, *args):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           os.path.join(ROOT, "bundles", bundle, "configs", "train.json"), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_budget_epochs_hold_the_step_budget():
    assert budget_epochs(40) == 40  # no step budget: passes over the data
    assert budget_epochs(40, steps=100, epoch_length=25) == 4
    assert budget_epochs(40, steps=101, epoch_length=25) == 5  # the last epoch may run past by < 1 epoch
    assert budget_epochs(40, steps=3, epoch_length=25) == 1


def test_a_tiny_and_a_larger_set_train_the_same_steps_and_early_stop_ends_the_run(demo_small, tmp_path):
    """Step budgets do not depend on the set's size; with nothing to learn (lr 0) the run stops after
    ``patience`` validations, records it, and running it again trains a new run instead of resuming."""
    common = ["--dataset_dir", demo_small, "--image_size", "64", "--batch_size", "2", "--steps", "6",
              "--epoch_length", "2"]
    for labels in ("1", "0"):  # one labelled image (a batch is cycled through), and all of them
        root = tmp_path / f"labels{labels}"
        _bundle("demo_student", *common, "--labels", labels, "--bundle_root", str(root))
        record = read_training_record(str(root))
        assert record["steps"] == 6 and record["budget_steps"] == 6 and not record["stopped_early"]
        assert 0 <= record["best_metric"] <= 1 and record["best_step"] in (2, 4, 6)
    root = tmp_path / "flat"
    flat = [*common[:-4], "--steps", "20", "--epoch_length", "2", "--patience", "2", "--learning_rate", "0",
            "--bundle_root", str(root)]
    log = _bundle("demo_student", *flat)
    record = read_training_record(str(root))
    assert record["stopped_early"] and record["steps"] == 6 and record["best_step"] == 2, record
    assert "early stop at step 6 of 20" in log
    again = _bundle("demo_student", *flat)
    assert "ends a finished run; starting a new run" in again and "handlers - INFO - resuming from" not in again


def _record(root, best, steps=100):
    os.makedirs(os.path.join(root, "models"), exist_ok=True)
    with open(os.path.join(root, "models", "training.json"), "w") as f:
        json.dump({"steps": steps, "budget_steps": 400, "stopped_early": steps < 400, "best_metric": best,
                   "best_step": 50, "metric": "val_mean_dice"}, f)
    return str(root)


def test_the_summary_says_loudly_when_the_teacher_is_weaker_than_a_student(tmp_path):
    pipeline = load_pipeline()
    teacher = _record(tmp_path / "teacher", 0.27, steps=30)
    lines = pipeline.teacher_check(teacher, {"scratch": _record(tmp_path / "scratch", 0.84),
                                             "tskd": _record(tmp_path / "tskd", 0.20)})
    text = "\n".join(lines)
    assert "best validation Dice 0.2700 (30 of 400 steps, best at step 50, stopped early)" in text
    assert "WARNING: the teacher is weak (validation Dice 0.2700 < 0.5)" in text
    assert "WARNING: the teacher (validation Dice 0.2700) is weaker than the scratch student (0.8400)" in text
    assert "weaker than the tskd student" not in text  # the TS-KD student is below the teacher here
    strong = pipeline.teacher_check(_record(tmp_path / "good", 0.9), {"scratch": str(tmp_path / "scratch")})
    assert not any("WARNING" in line for line in strong) and len(strong) == 2
    assert pipeline.teacher_check(str(tmp_path / "never_trained"), {}) == []


@pytest.mark.parametrize("profile", ["quick", "smoke"])
def test_profiles_size_every_segmentation_stage_in_steps(profile):
    pipeline = load_pipeline()
    for stage in ("teacher", "pretrain", "student"):
        budget = pipeline.stage_budget(pipeline.PROFILES[profile], stage)
        assert budget["steps"] > 0 and budget["epoch_length"] > 0 and "epochs" not in budget
    assert pipeline.stage_budget(pipeline.PROFILES["paper"], "teacher") == {"epochs": 160}
