"""--budget_scale: the step caps a machine has time for (common.pipeline.budget_scale)."""

import json
import math

import pytest

from common.errors import TskdError
from common.pipeline import budget_scale as bs
from common.pipeline import profiles

# A made-up reference run: 100 s of teacher training and 50 s of fine-tuning (both scaled), 30 s of other stages.
REFERENCE = {"machine": "test", "step_seconds": {"teacher": 1.0, "student": 0.2},
             "seconds": {"teacher": 100.0, "teacher_pass": 10.0, "pretrain": 10.0, "student": 50.0, "other": 10.0}}


def test_a_stage_s_step_cap_scales_in_whole_epochs_and_only_where_it_stops_on_a_plateau():
    quick, smoke, paper = (profiles.PROFILES[p] for p in ("quick", "smoke", "paper"))
    assert profiles.stage_budget(quick, "teacher", 1.5)["steps"] == 300
    assert profiles.stage_budget(quick, "student", 2)["steps"] == 1500
    assert profiles.stage_budget(quick, "student", 1.3)["steps"] == 975  # 975 = 39 epochs of 25
    assert profiles.stage_budget(quick, "student", 1.01)["steps"] == 750  # rounds to whole epochs
    assert profiles.stage_budget(quick, "student", 0.01)["steps"] == 25  # at least one epoch
    assert profiles.stage_budget(quick, "student", 1.5)["patience_fraction"] == 0.5  # the stop rule is kept
    assert profiles.stage_budget(quick, "pretrain", 2) == profiles.stage_budget(quick, "pretrain")  # images, not steps
    assert profiles.stage_budget(smoke, "teacher", 2)["steps"] == 4
    assert profiles.stage_budget(paper, "student", 2) == {"epochs": 160}  # epochs: no cap to scale


def test_the_prediction_follows_each_stage_s_step_time_and_the_scale():
    same = {"teacher": 1.0, "student": 0.2}
    assert bs.predict_seconds(same, 1.0, REFERENCE) == pytest.approx(180.0)
    assert bs.predict_seconds(same, 2.0, REFERENCE) == pytest.approx(180.0 + 100 + 50)
    # A teacher twice as slow doubles the teacher's training and its cache pass only.
    assert bs.predict_seconds({"teacher": 2.0, "student": 0.2}, 1.0, REFERENCE) == pytest.approx(180.0 + 110)
    assert bs.predict_seconds({"teacher": 1.0, "student": 0.4}, 1.0, REFERENCE) == pytest.approx(180.0 + 70)


def test_auto_takes_the_largest_scale_that_fits_and_never_less_than_the_profile_s_own():
    target = 330 / 60 / bs.SAFETY  # exactly the reference at x2 (180 + 150 s)
    scale, predicted = bs.choose_scale({"teacher": 1.0, "student": 0.2}, target, REFERENCE)
    assert scale == 2.0 and list(predicted) == list(bs.LADDER)
    assert predicted[1.0] < predicted[1.5] < predicted[2.0] == pytest.approx(5.5)
    assert bs.choose_scale({"teacher": 1.01, "student": 0.2}, target, REFERENCE)[0] == 1.5  # a little slower
    assert bs.choose_scale({"teacher": 3.0, "student": 0.6}, target, REFERENCE)[0] == 1.0  # over even at x1


def test_the_reference_run_is_a_measured_main_job_inside_the_profile_s_time():
    reference = bs.REFERENCE_RUN
    assert all(v > 0 for v in reference["step_seconds"].values()) and all(v > 0 for v in reference["seconds"].values())
    assert set(reference["seconds"]) == set(bs.SCALED) == set(bs.MADE_OF)
    minutes = profiles.PROFILES["quick"]["minutes"]
    # On its own machine the prediction at x1 is the job as timed, and that fitted the profile's time.
    assert bs.predict_seconds(reference["step_seconds"], 1.0) == pytest.approx(sum(reference["seconds"].values()))
    assert sum(reference["seconds"].values()) / 60 <= minutes


@pytest.mark.parametrize("value", ["fast", "0", "-1", "nan", "inf", ""])
def test_a_budget_scale_that_is_neither_auto_nor_a_positive_number_is_one_clear_error(value):
    with pytest.raises(TskdError, match="--budget_scale must be 'auto' or a positive number"):
        bs.parse_budget_scale(value)


def test_auto_is_measured_once_per_folder_recorded_and_reused(tmp_path):
    path = str(tmp_path / "budget.json")
    quick, calls = profiles.PROFILES["quick"], []

    def measure():
        calls.append(1)
        return {"teacher": 0.01, "student": 0.001}  # a very fast machine

    record = bs.resolve_budget_scale("auto", quick, path, measure)
    assert record["scale"] == max(bs.LADDER) and record["how"] == "auto" and calls == [1]
    assert json.load(open(path)) == record and "machine" in record and set(record["predicted_minutes"]) == {"1", "1.5", "2"}
    # A later run into the folder trains the same budgets, measuring nothing.
    assert bs.resolve_budget_scale("auto", quick, path, measure) == record and calls == [1]
    assert "x 2, chosen for this machine (--budget_scale auto)" in bs.describe_scale(record)
    # A grid folder (keep) refuses another scale; a run folder takes it and records it.
    with pytest.raises(TskdError, match=r"--budget_scale 2 \(budget.json\).*--budget_scale 1\.5"):
        bs.resolve_budget_scale("1.5", quick, path, measure, keep=True)
    assert bs.resolve_budget_scale("1.5", quick, path, measure)["scale"] == 1.5
    assert json.load(open(path)) == {"scale": 1.5, "how": "given"} and calls == [1]


def test_auto_is_1_without_measuring_for_old_folders_profiles_without_a_time_target_and_report_only(tmp_path):
    def measure():
        raise AssertionError("nothing to measure")

    quick, smoke = profiles.PROFILES["quick"], profiles.PROFILES["smoke"]
    old = bs.resolve_budget_scale("auto", quick, str(tmp_path / "old.json"), measure, earlier=True)
    assert old["scale"] == 1.0 and "before budget scales were recorded" in old["how"]
    assert bs.resolve_budget_scale("auto", smoke, str(tmp_path / "smoke.json"), measure)["scale"] == 1.0
    report_only = bs.resolve_budget_scale("auto", quick, str(tmp_path / "none.json"), None)
    assert report_only["scale"] == 1.0 and not (tmp_path / "none.json").exists()


def test_step_times_are_measured_on_the_run_s_own_teacher_and_student(demo_small):
    """The real bundles' models at the demo's 64² (LiteMedSAM with LoRA, the skip student), as their configs
    build them; the teacher's step costs more than the student's."""
    seconds = bs.measure_step_seconds("demo", demo_small, {"image_size": 64}, steps=1, warmup=1)
    assert set(seconds) == {"teacher", "student"}
    assert all(math.isfinite(v) and v > 0 for v in seconds.values())
    assert seconds["teacher"] > seconds["student"]


def test_a_run_config_s_budget_must_be_resolved_before_a_stage_uses_it():
    from common.pipeline.config import RunConfig

    with pytest.raises(RuntimeError, match="resolved by run_pipeline or the grid"):
        RunConfig().stage_budget("student")
    assert RunConfig(budget_scale=1.5).stage_budget("student")["steps"] == 1125
    with pytest.raises(TskdError, match="--budget_scale"):
        RunConfig(budget_scale="twice").checked()


def test_the_reference_keeps_the_profile_s_own_budget_whatever_the_scale(monkeypatch, tmp_path):
    """At x1.5 the DynUNet reference scored lower than at x1 in 5 of 6 demo cells: the scale must not
    weaken the bar (the students' budget scales, the reference's does not)."""
    from common.pipeline import stages
    from common.pipeline.config import RunConfig

    trained = {}
    monkeypatch.setattr(stages, "train_bundle", lambda dataset, stage, root, overrides, **k: trained.update(overrides))
    monkeypatch.setattr(stages, "evaluate_bundle", lambda *a, **k: {})
    config = RunConfig(profile="quick", budget_scale=1.5)
    stages.reference_stage(config, str(tmp_path), str(tmp_path / "reference"), 1234)
    assert trained["steps"] == 750 and config.stage_budget("student")["steps"] == 1125
