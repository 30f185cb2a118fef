"""Training budgets in optimizer steps, validation-based early stopping, and the teacher check that reads
what they record."""

import json
import os

import pytest

from conftest import ROOT
from common.pipeline import profiles as pipeline_profiles
from common.pipeline import report as pipeline_report
from common.engines import budget_epochs, read_training_record


def test_budget_epochs_hold_the_step_budget():
    assert budget_epochs(40) == 40  # no step budget: passes over the data
    assert budget_epochs(40, steps=100, epoch_length=25) == 4
    assert budget_epochs(40, steps=101, epoch_length=25) == 5  # the last epoch may run past by < 1 epoch
    assert budget_epochs(40, steps=3, epoch_length=25) == 1


def test_a_tiny_and_a_larger_set_train_the_same_steps_and_early_stop_ends_the_run(demo_small, tmp_path, run_stage):
    """Step budgets do not depend on the set's size; with nothing to learn (lr 0) the run stops after
    ``patience`` validations, records it, and running it again trains a new run instead of resuming. The
    student bundle runs in process, as tskd-run runs it; its log is read from the captured output."""

    def train(root, **overrides):
        return run_stage("demo_student", ("train",), root, dataset_dir=demo_small, image_size=64, batch_size=2,
                         **overrides)

    for labels in (1, 0):  # one labelled image (a batch is cycled through), and all of them
        root = tmp_path / f"labels{labels}"
        train(root, steps=6, epoch_length=2, labels=labels)
        record = read_training_record(str(root))
        assert record["steps"] == 6 and record["budget_steps"] == 6 and not record["stopped_early"]
        assert 0 <= record["best_metric"] <= 1 and record["best_step"] in (2, 4, 6)
    root = tmp_path / "flat"
    flat = {"steps": 20, "epoch_length": 2, "patience": 2, "learning_rate": 0}
    log = train(root, **flat)
    record = read_training_record(str(root))
    assert record["stopped_early"] and record["steps"] == 6 and record["best_step"] == 2, record
    assert "early stop at step 6 of 20" in log
    again = train(root, **flat)
    assert "ends a finished run; starting a new run" in again and "handlers - INFO - resuming from" not in again


def _record(root, best, steps=100, best_step=50):
    os.makedirs(os.path.join(root, "models"), exist_ok=True)
    with open(os.path.join(root, "models", "training.json"), "w") as f:
        json.dump({"steps": steps, "budget_steps": 400, "stopped_early": steps < 400, "best_metric": best,
                   "best_step": best_step, "metric": "val_mean_dice"}, f)
    return str(root)


def test_the_summary_says_loudly_when_a_stage_ends_at_its_cap_still_improving(tmp_path):
    capped = pipeline_report.teacher_check(_record(tmp_path / "teacher", 0.9, steps=400, best_step=400),
                                    {"tskd": _record(tmp_path / "tskd", 0.8, steps=400, best_step=375)})
    text = "\n".join(capped)
    assert "WARNING: the teacher was still improving when its budget ran out** (best validation at its last step, 400)" in text
    assert "tskd student was still improving" not in text  # its best came one check before the end
    plateau = pipeline_report.teacher_check(_record(tmp_path / "early", 0.9, steps=150, best_step=75), {})
    assert not any("still improving" in line for line in plateau)


def test_the_summary_says_loudly_when_the_teacher_is_weaker_than_a_student(tmp_path):
    teacher = _record(tmp_path / "teacher", 0.27, steps=30)
    lines = pipeline_report.teacher_check(teacher, {"scratch": _record(tmp_path / "scratch", 0.84),
                                             "tskd": _record(tmp_path / "tskd", 0.20)})
    text = "\n".join(lines)
    assert "best validation Dice 0.2700 (30 of 400 steps, best at step 50, stopped early)" in text
    assert "WARNING: the teacher is weak (validation Dice 0.2700 < 0.5)" in text
    assert "WARNING: the teacher (validation Dice 0.2700) is weaker than the scratch student (0.8400)" in text
    assert "weaker than the tskd student" not in text  # the TS-KD student is below the teacher here
    # Equal to the four digits shown (0.94658339 against 0.94658411, a real pair): not called weaker.
    equal = pipeline_report.teacher_check(_record(tmp_path / "equal", 0.94658339),
                                          {"tskd": _record(tmp_path / "tskd_equal", 0.94658411)})
    assert not any("is weaker than" in line for line in equal)
    strong = pipeline_report.teacher_check(_record(tmp_path / "good", 0.9), {"scratch": str(tmp_path / "scratch")})
    assert not any("WARNING" in line for line in strong) and len(strong) == 2
    assert pipeline_report.teacher_check(str(tmp_path / "never_trained"), {}) == []


@pytest.mark.parametrize("profile", ["quick", "smoke"])
def test_profiles_size_every_segmentation_stage_in_steps(profile):
    for stage in ("teacher", "student"):
        budget = pipeline_profiles.stage_budget(pipeline_profiles.PROFILES[profile], stage)
        assert budget["steps"] > 0 and budget["epoch_length"] > 0 and "epochs" not in budget
    for method in pipeline_profiles.PRETRAIN_BATCH:
        budget = pipeline_profiles.pretrain_recipe(pipeline_profiles.PROFILES[profile], method)
        assert budget["steps"] > 0 and budget["epoch_length"] > 0 and "epochs" not in budget
    assert pipeline_profiles.stage_budget(pipeline_profiles.PROFILES["paper"], "teacher") == {"epochs": 160}


def test_each_pretraining_method_gets_its_own_recipe_batch_and_the_same_images():
    """MAE trains at its batch of 64 and MoCo v3 at 32 (paper, and their own recipes); the quick profile scales
    only the distillations' 48 down, and every method sees the same number of transfer images (the paper's
    equal epochs), so a larger batch takes fewer steps."""
    paper = {m: pipeline_profiles.pretrain_recipe(pipeline_profiles.PROFILES["paper"], m) for m in pipeline_profiles.PRETRAIN_BATCH}
    assert {m: r["batch_size"] for m, r in paper.items()} == {"tskd": 48, "takd": 48, "mae": 64, "mocov3": 32}
    assert all(r == {"batch_size": r["batch_size"], "epochs": 1600} for r in paper.values())
    quick = {m: pipeline_profiles.pretrain_recipe(pipeline_profiles.PROFILES["quick"], m) for m in pipeline_profiles.PRETRAIN_BATCH}
    assert {m: r["batch_size"] for m, r in quick.items()} == {"tskd": 16, "takd": 16, "mae": 64, "mocov3": 32}
    assert {m: r["steps"] for m, r in quick.items()} == {"tskd": 250, "takd": 250, "mae": 63, "mocov3": 125}


def _scripted_run(folder, scores, stop_after=None, patience=0, **rule):
    """A real ignite trainer whose model's weight is set to the epoch number, validated by a scripted
    evaluator (epoch e scores ``scores[e - 1]``), with the bundles' ValidationTracker and ResumableCheckpoint;
    ``stop_after``: the run is interrupted after that epoch's checkpoint."""
    import torch
    from ignite.engine import Engine, Events

    from common.engines import ResumableCheckpoint, ValidationTracker

    model = torch.nn.Linear(1, 1, bias=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def step(engine, batch):
        with torch.no_grad():
            model.weight.fill_(float(engine.state.epoch))
        return {"loss": 0.0}

    trainer, validator = Engine(step), Engine(lambda e, b: None)
    validator.state.key_metric_name = "val_mean_dice"

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):  # what MONAI's ValidationHandler does: the evaluator runs and holds its metrics
        validator.state.epoch = engine.state.epoch
        validator.state.metrics = {"val_mean_dice": scores[engine.state.epoch - 1]}

    ValidationTracker(validator, patience=patience, output_dir=str(folder), model=model, **rule).attach(trainer)
    ResumableCheckpoint(str(folder), {"model": model, "optimizer": optimizer}).attach(trainer)
    if stop_after:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda e: e.terminate())
    trainer.run([0, 1], max_epochs=len(scores))
    return torch.load(os.path.join(folder, "model.pt"), weights_only=True)["weight"].item(), read_training_record(
        os.path.dirname(folder)) if os.path.basename(folder) == "models" else None


def test_a_run_interrupted_after_its_best_resumes_to_the_same_best_model_and_patience(tmp_path):
    """Best at epoch 2 of 4, interrupted after epoch 2: the resumed run must not save the worse epoch 3 over
    it, and patience goes on counting the validations waited before the interruption."""
    scores = [0.5, 0.9, 0.3, 0.4]
    whole, whole_record = _scripted_run(tmp_path / "whole" / "models", scores)
    _scripted_run(tmp_path / "cut" / "models", scores, stop_after=2)
    resumed, resumed_record = _scripted_run(tmp_path / "cut" / "models", scores)
    assert whole == resumed == 2.0  # the model of epoch 2, in both
    assert resumed_record["best_metric"] == whole_record["best_metric"] == 0.9
    assert resumed_record["best_step"] == whole_record["best_step"] == 4
    # The validation curve survives the interruption whole: one [step, value] per validation, none twice.
    assert resumed_record["history"] == whole_record["history"] == [[2, 0.5], [4, 0.9], [6, 0.3], [8, 0.4]]
    # Patience across the interruption: best at epoch 1, two worse after it; stopped at epoch 3 either way.
    flat = [0.9, 0.3, 0.4, 0.5, 0.6]
    _scripted_run(tmp_path / "flat_whole" / "models", flat, patience=2)
    _scripted_run(tmp_path / "flat_cut" / "models", flat, stop_after=2, patience=2)
    _scripted_run(tmp_path / "flat_cut" / "models", flat, patience=2)
    for name in ("flat_whole", "flat_cut"):
        record = read_training_record(str(tmp_path / name))
        assert record["stopped_early"] and record["steps"] == 6 and record["best_step"] == 2, (name, record)


def test_the_plateau_rule_waits_longer_in_a_long_run_and_can_judge_a_moving_average():
    from common.engines.budget import plateau, replay_stop_rule

    assert plateau([0.5, 0.9, 0.3, 0.4], patience=2) == (1, True)
    assert plateau([0.5, 0.9, 0.3, 0.4], patience=0) == (1, False)  # 0: never stops
    # The floor: no stop before min_steps, whatever the validations say.
    assert plateau([0.5, 0.9, 0.3, 0.4], patience=2, step=100, min_steps=250) == (1, False)
    assert plateau([0.5, 0.9, 0.3, 0.4], patience=2, step=250, min_steps=250) == (1, True)
    # Best at validation 6 of 12: "half the run" asks for 6 validations after it, not 3.
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.9] + [0.8] * 5
    assert plateau(rising, patience=3) == (5, True)
    assert plateau(rising, patience=3, fraction=0.5) == (5, False)
    assert plateau(rising + [0.8], patience=3, fraction=0.5) == (5, True)
    # One lucky validation does not win on the moving average (weights 0.5): 0.5, .725, .6625, .73125, .765625.
    noisy = [0.5, 0.95, 0.6, 0.8, 0.8]
    assert plateau(noisy)[0] == 1 and plateau(noisy, smoothing=0.5)[0] == 4
    # Replayed on a curve of (step, value): where it stops and which step's weights it keeps; a cap cuts the curve.
    curve = [(25 * (i + 1), v) for i, v in enumerate(rising)]
    assert replay_stop_rule(curve, patience=3) == (225, 150)
    assert replay_stop_rule(curve, patience=3, fraction=0.5) == (275, 150)
    assert replay_stop_rule(curve, patience=3, cap=100) == (100, 100)
    assert replay_stop_rule(curve, patience=3, min_steps=250) == (250, 150)


def test_the_tracker_keeps_the_moving_averages_best_and_stops_on_half_the_run(tmp_path):
    weight, record = _scripted_run(tmp_path / "smoothed" / "models", [0.5, 0.95, 0.6, 0.8, 0.8], smoothing=0.5)
    assert weight == 5.0 and record["best_step"] == 10 and record["best_metric"] == 0.8, record
    _, record = _scripted_run(tmp_path / "half" / "models", [0.1, 0.2, 0.3, 0.4, 0.5, 0.9] + [0.8] * 8, patience=3,
                              patience_fraction=0.5)
    assert record["stopped_early"] and record["steps"] == 24 and record["best_step"] == 12, record
    assert record["stop_rule"] == {"patience": 3, "patience_fraction": 0.5, "smoothing": 0.0, "min_steps": 0}
    # A lucky first validation leads the moving average for a while (the demo grid's reference stopped at step
    # 100 of 750 on this shape): no stop before min_steps, and the later, better validations then win.
    lucky = [0.876, 0.826, 0.883, 0.862, 0.90, 0.91, 0.91, 0.92]
    _, record = _scripted_run(tmp_path / "lucky" / "models", lucky, patience=3, patience_fraction=0.5, smoothing=0.5)
    assert record["stopped_early"] and record["steps"] == 8 and record["best_step"] == 2, record
    weight, record = _scripted_run(tmp_path / "floor" / "models", lucky, patience=3, patience_fraction=0.5,
                                   smoothing=0.5, min_steps=10)
    assert not record["stopped_early"] and record["best_step"] == 16 and weight == 8.0, record


@pytest.mark.parametrize("bundle", ["demo_student", "demo_reference", "demo_teacher"])
def test_the_quick_profiles_stop_rule_reaches_the_bundles_tracker(bundle):
    """The profile's budget keys are bundle overrides: a key the bundle lacks would be silently ignored, so the
    tracker the bundle builds must carry the student's rule (the teacher keeps its plain patience)."""
    from monai.bundle import ConfigParser

    stage = "teacher" if bundle.endswith("teacher") else "student"
    budget = pipeline_profiles.stage_budget(pipeline_profiles.PROFILES["quick"], stage)
    parser = ConfigParser()
    parser.read_config(os.path.join(os.path.dirname(__file__), "..", "bundles", bundle, "configs", "train.json"))
    for key, value in budget.items():
        assert key in parser.config, f"{bundle} has no '{key}' for the profile to set"
        parser[key] = value
    handler = next(h for h in parser.config["train"]["handlers"] if h.get("_target_", "").endswith("ValidationTracker"))
    keys = ("patience", "patience_fraction", "smoothing", "min_steps")
    rule = {k: parser.get_parsed_content(handler[k].lstrip("@")) for k in keys}
    assert rule == {"patience": budget["patience"], "patience_fraction": budget.get("patience_fraction", 0.0),
                    "smoothing": budget.get("val_smoothing", 0.0), "min_steps": budget["steps"] // 3}


def test_the_teachers_poly_schedule_warms_up_then_decays_as_samed():
    import torch

    from common.engines import warmup_schedule
    from common.errors import TskdError

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.005)
    schedule = warmup_schedule(optimizer, "poly", warmup_steps=4, total_steps=14)
    rates = []
    for _ in range(14):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert rates[:5] == pytest.approx([0.0, 0.00125, 0.0025, 0.00375, 0.005])
    assert rates[9] == pytest.approx(0.005 * 0.5 ** 0.9)  # halfway through the decay
    assert rates == sorted(rates[:5]) + sorted(rates[5:], reverse=True)
    cosine = warmup_schedule(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "cosine", 2, 10)
    assert type(cosine).__name__ == "WarmupCosineSchedule"
    with pytest.raises(TskdError, match="lr_schedule must be one of cosine, poly"):
        warmup_schedule(optimizer, "step", 1, 10)


def test_the_teacher_warms_up_over_half_a_short_run_and_the_students_over_a_tenth():
    """The generated bundles' warm-up: the teacher's over half its run (capped at warmup_iterations), which kept it
    from the all-background start at the paper's lr (docs/results/teacher_warmup); the students' a tenth."""
    from monai.bundle import ConfigParser

    def warmup(bundle, steps):
        parser = ConfigParser()
        parser.read_config(os.path.join(ROOT, "bundles", bundle, "configs", "train.json"))
        parser.update({"steps": steps, "steps_per_epoch": 25})  # what the data loader would give at epoch_length 25
        return parser.get_parsed_content("lr_scheduler#warmup_steps"), parser.get_parsed_content("lr_scheduler#total_steps")

    assert warmup("demo_teacher", 200) == (100, 200)  # the quick profile's teacher
    assert warmup("drive_teacher", 175) == (88, 175)
    assert warmup("demo_teacher", 0) == (250, 4000)  # the paper's 160 epochs: the 250-step cap
    assert warmup("demo_student", 750) == (75, 750)
    assert warmup("demo_pretrain", 250) == (25, 250)


def test_the_teacher_trains_in_bf16_and_the_reference_and_generator_in_fp32_by_default():
    """Each stage's measured precision (docs/results/teacher_bf16, the README's mixed-precision notes): the quick
    teacher's 200 steps are bf16 steps, and fp32 ones would not fit its 15 minutes; the reference stays fp32."""
    def amp(bundle):
        with open(os.path.join(ROOT, "bundles", bundle, "configs", "train.json")) as f:
            return json.load(f)["amp"]

    assert amp("demo_teacher") is True and amp("drive_teacher") is True
    assert amp("demo_student") is True and amp("demo_pretrain") is True
    assert amp("demo_reference") is False and amp("demo_synth") is False
    assert pipeline_profiles.PROFILES["quick"]["teacher"]["steps"] == 200


def test_a_given_teacher_is_checked_from_its_own_bundle_or_said_to_be_unchecked(tmp_path):
    given = _record(tmp_path / "their_teacher", 0.81)
    root = pipeline_report.teacher_record_root(os.path.join(given, "models", "model.pt"), str(tmp_path / "run" / "teacher"))
    assert root == given and "best validation Dice 0.8100" in pipeline_report.teacher_check(root, {})[0]
    lonely = str(tmp_path / "teacher.pt")
    assert pipeline_report.teacher_check(pipeline_report.teacher_record_root(lonely, ""), {}) == []
    assert "**The teacher was not checked: '" + str(tmp_path / "teacher.pt") + "' (--teacher_checkpoint) has no " \
        "training record" in pipeline_report.no_teacher_record(lonely)
    assert pipeline_report.teacher_record_root("", "out/teacher") == "out/teacher"
