"""The main job end to end (the paper profile with its budgets and set sizes scaled down, 64² images), its stage
skipping, and the checks made before any stage."""

import json
import os
import subprocess
import sys

from conftest import ROOT

from common.pipeline import cli, config as pipeline_config, profiles, report, stages


def pipeline(*args):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "run_pipeline.py"), "--profile", "smoke", "--image_size", "64",
           *args]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def stage_lines(output):
    """The pipeline's own stage lines (the bundles' logs are interleaved on stdout)."""
    return [line for line in output.splitlines() if line.startswith("=== ")]


def paper_profile_scaled() -> dict:
    """``--profile paper`` with every setting kept but its epochs (one per stage) and set sizes (4 images)."""
    import copy

    paper = profiles.PROFILES["paper"]
    scaled = copy.deepcopy(paper)
    for stage in ("teacher", "pretrain", "student", "synth"):
        scaled[stage]["epochs"] = 1
    scaled.update(transfer=4, augmented=4)

    def leaves(profile, prefix=""):
        for key, value in profile.items():
            yield from leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]

    changed = {k for (k, v), (_, w) in zip(leaves(paper), leaves(scaled)) if v != w}
    assert changed == {"teacher.epochs", "pretrain.epochs", "student.epochs", "synth.epochs", "transfer", "augmented"}
    return scaled


def test_the_paper_profile_runs_end_to_end_writes_metrics_and_skips_done_stages(demo_small, tmp_path, monkeypatch,
                                                                               capsys):
    """``--profile paper`` is sized for a GPU: here it runs with every one of its settings except the epochs and
    the set sizes, on tiny data, so a wiring error shows here and not hours into a run. Then the same command
    again: every training stage is skipped."""
    from common.data import load_datalist
    from common.engines import read_recipe

    monkeypatch.setitem(profiles.PROFILES, "paper", paper_profile_scaled())
    out = tmp_path / "run"
    argv = ["--profile", "paper", "--data_dir", demo_small, "--image_size", "64", "--out", str(out), "--method", "tskd"]
    cli.run_main(argv)
    first = capsys.readouterr().out
    for stage in ("teacher: training", "augmented set", "synth: training", "synthetic transfer set: sampling",
                  "pretrain: training", "student: training"):
        assert stage in first
    # The paper's recipes reached the bundles (read back from what each run trained with).
    teacher = read_recipe(str(out / "teacher"))
    assert teacher["optimizer"] == "AdamW" and teacher["param_groups"][0]["lr"] == 0.005
    assert teacher["settings"]["lr_schedule"] == "poly"
    pretrain = read_recipe(str(out / "pretrain_tskd"))
    assert pretrain["batch_size"] == 48 and pretrain["optimizer"] == "Adam"
    assert pretrain["param_groups"][0]["lr"] == 1.5e-4 and pretrain["param_groups"][0]["weight_decay"] == 0.05
    assert read_recipe(str(out / "student_tskd"))["param_groups"][0]["lr"] == 1e-4
    synthetic = [d for d in os.listdir(out / "synth") if d.startswith("synthetic_")]
    manifest = json.load(open(out / "synth" / synthetic[0] / "manifest.json"))
    assert manifest["count"] == 4 and manifest["steps"] == 50 and len(manifest["generator_sha256"]) == 64
    assert json.load(open(out / "pretrain_tskd" / "done.json"))["overrides"]["transfer_file"].startswith(
        str(out / "synth" / synthetic[0]))
    metrics = json.load(open(out / "metrics.json"))
    assert set(metrics) == {"teacher", "student"}
    for stage_report in metrics.values():
        assert {"mean_dice", "mean_hd95", "mean_iou", "per_class"} <= set(stage_report)
        assert set(stage_report["per_class"]) == {"grey_matter", "white_matter"}
        assert set(stage_report["per_class"]["grey_matter"]) == {"dice", "hd95", "iou", "images"}
        assert stage_report["hd95_unit"] == "mm"  # the demo's NIfTI slices carry their spacing
    summary = (out / "summary.md").read_text()
    assert "## student" in summary and "Transfer set: 4 synthetic images (--transfer_source synth; DDIM 50" in summary
    # One epoch of the generator makes noise: the summary says so, loudly.
    assert "**WARNING: the synthetic transfer set is of low quality" in summary
    # Every mask the run used is counted: the training budget and the validation masks beside it.
    datalist = os.path.join(demo_small, "datalist.json")
    n_train, n_val = len(load_datalist(datalist, "training")), len(load_datalist(datalist, "validation"))
    assert f"Masks used: {n_train} labels (+ {n_val} for validation)." in summary
    # Where it ran, and where each stage was trained (the same seed elsewhere gives other numbers).
    from common.provenance import cpu_name, machine

    assert f"Ran on: {machine()} (each stage's done.json" in summary and cpu_name() in machine()
    assert json.load(open(out / "student_tskd" / "done.json"))["machine"] == machine()
    assert "=== teacher check before distilling:" in first and "Teacher: best validation Dice" in summary
    assert "checkpoint was chosen on these validation images, so the figure is optimistic" in summary
    # Same inputs: every training stage is skipped (test_comparison's grid reuses shared stages across methods).
    cli.run_main(argv)
    again = stage_lines(capsys.readouterr().out)
    assert not any(": training (" in line for line in again)
    assert sum("already trained" in line for line in again) == 4  # teacher, synth, pretrain, student


def test_transfer_report_states_source_and_quality(tmp_path):
    folder = tmp_path / "synthetic"
    folder.mkdir()
    (folder / "datalist.json").write_text(json.dumps({"manifest": {"steps": 20}, "training": [{"image": "s0.nii.gz"}] * 3}))
    assert "quality is unknown" in report.transfer_report("synth", str(folder))[-1]
    for psnr, loud in ((report.LOW_SYNTH_PSNR + 3, False), (report.LOW_SYNTH_PSNR - 0.5, True)):
        (folder / "quality.json").write_text(json.dumps({"mean_psnr": psnr, "mean_mse": 50.0, "near_copies": [1]}))
        lines = report.transfer_report("synth", str(folder))
        assert lines[0].startswith("Transfer set: 3 synthetic images") and f"mean PSNR {psnr:.2f} dB" in lines[1]
        assert "near-copies (PSNR > 40 dB): 1" in lines[1]
        assert any("WARNING" in line for line in lines) == loud
    assert "affine views" in report.transfer_report("augment", str(folder))[0]


def test_prepare_folder_then_pipeline_on_own_images(tmp_path):
    from dataset_trees import make_pairs

    src = make_pairs(str(tmp_path / "mine"), mask_dir="labels", n=8, values=[1, 2], ext="png")
    prepared = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "prepare_data.py"), "folder", "--src", src,
                               "--out", str(tmp_path / "data"), "--classes", "cyst=1,tumour=2", "--image_size", "64"],
                              capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr
    out = tmp_path / "run"
    # No pre-training: the folder bundles' pretrain stage is the dataset-bundle tests'; the demo pipeline
    # test covers the pre-training stages end to end.
    pipeline("--dataset", "folder", "--data_dir", str(tmp_path / "data"), "--out", str(out), "--method", "scratch",
             "--budget_scale", "2")
    metrics = json.load(open(out / "metrics.json"))
    assert set(metrics["student"]["per_class"]) == {"cyst", "tumour"}
    assert (out / "predictions.png").stat().st_size > 1000
    # --budget_scale doubled the teacher's and the student's step caps (the smoke profile's 2), and says so.
    for stage in ("teacher", "student_scratch"):
        assert json.load(open(out / stage / "done.json"))["overrides"]["steps"] == 4
    assert json.load(open(out / "budget.json")) == {"scale": 2.0, "how": "given"}
    assert "Step budgets: the smoke profile's x 2 (--budget_scale given)." in (out / "summary.md").read_text()


def test_a_stage_whose_weights_were_overwritten_is_trained_again(tmp_path, monkeypatch):
    """Another run (e.g. another seed, killed after it rewrote the weights) must not leave this run's
    ``done.json`` pointing at foreign weights: the stage is trained again, not skipped."""
    calls = []

    def fake_training(dataset, stage, configs, root, overrides, isolate=False):  # what a bundle run leaves: weights
        args = overrides
        os.makedirs(os.path.join(root, "models"), exist_ok=True)
        with open(os.path.join(root, "models", "model.pt"), "wb") as f:
            f.write(f"weights of run {len(calls)}".encode())
        calls.append(args)

    monkeypatch.setattr(stages, "run_bundle", fake_training)
    root = str(tmp_path / "teacher")
    first = stages.train_bundle("demo", "teacher", root, {"seed": 1234, "epochs": 1})
    assert stages.train_bundle("demo", "teacher", root, {"seed": 1234, "epochs": 1}) == first
    assert len(calls) == 1  # skipped: same settings, same weights
    # Another seed starts in the same folder: done.json goes before it writes anything.
    monkeypatch.setattr(stages, "run_bundle", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        stages.train_bundle("demo", "teacher", root, {"seed": 1, "epochs": 1})
    except KeyboardInterrupt:
        pass
    assert not os.path.exists(os.path.join(root, "done.json"))
    monkeypatch.setattr(stages, "run_bundle", fake_training)
    again = stages.train_bundle("demo", "teacher", root, {"seed": 1234, "epochs": 1})
    assert len(calls) == 2 and again != first  # trained again; the stamp follows the new weights
    with open(os.path.join(root, "models", "model.pt"), "wb") as f:
        f.write(b"overwritten by hand")
    stages.train_bundle("demo", "teacher", root, {"seed": 1234, "epochs": 1})
    assert len(calls) == 3  # done.json names other weights than those on disk


def test_run_level_settings_are_checked_before_any_stage(demo_small, tmp_path, monkeypatch, capsys):
    import pytest

    cases = {
        "missing teacher checkpoint": (["--teacher_checkpoint", str(tmp_path / "teacher.pt")], ["teacher.pt", "not found"]),
        "negative labels": (["--labels", "-1"], ["--labels must be 0"]),
        "labels above the split": (["--labels", "999"], ["budget of 999"]),
        "image size": (["--image_size", "100"], ["--image_size", "multiple of 16"]),
        # x16 suits the student, but LiteMedSAM's encoder downsamples by 32: refused before its stage starts.
        "image size for the teacher": (["--image_size", "48"], ["--image_size", "multiple of 32", "LiteMedSAM"]),
        "unwritable output": (["--out", str(tmp_path / "a_file" / "run")], ["cannot write", "a_file"]),
        "imagenet_mae without weights": (["--method", "imagenet_mae"], ["--imagenet_mae_checkpoint", "mae-lite"]),
        "num_heads for a 3-head pre-training": (["--num_heads", "12"], ["--num_heads 12 needs --method imagenet_mae"]),
        "unlabelled with every label in use": (["--transfer_source", "unlabelled"], ["--unlabelled_dir", "--labels N"]),
        # The prepared dataset's images/ folder holds every split: distilling on it would leak the held-out images.
        "unlabelled folder holding held-out images": (
            ["--transfer_source", "unlabelled", "--unlabelled_dir", os.path.join(demo_small, "images")],
            ["--unlabelled_dir is the", "leak", "same content"]),
        "unlabelled folder without images": (["--transfer_source", "unlabelled", "--unlabelled_dir", str(tmp_path / "empty")],
                                             ["holds no images"]),
        "unreadable unlabelled image": (["--transfer_source", "unlabelled", "--unlabelled_dir", str(tmp_path / "broken")],
                                        ["scan.png", "cannot be read as an image", "remove it"]),
        "validation budget above the split": (["--val_labels", "999"], ["999 validation images", "val_labels"]),
    }
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "scan.png").write_bytes(b"not a png")
    failures = []
    for name, (args, fragments) in cases.items():
        out = ["--out", str(tmp_path / "run")] if "--out" not in args else []
        with pytest.raises(SystemExit) as stopped:  # any other exception fails the test: it would be a traceback
            cli.run_main(["--profile", "smoke", "--data_dir", demo_small, *out, *args])
        message = str(stopped.value.code)
        if not message.startswith("run_pipeline:") or "\n" in message:
            failures.append(f"{name}: not one line: {message!r}")
        elif not all(f in message for f in fragments):
            failures.append(f"{name}: {message!r} lacks {fragments}")
        elif "===" in capsys.readouterr().out:
            failures.append(f"{name}: a stage started before the check")
    assert not failures, "\n".join(failures)
    # From the command line: the same check is one line on stderr, without a traceback.
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run_pipeline.py"), "--profile", "smoke",
                             "--data_dir", demo_small, "--out", str(tmp_path / "run"), "--labels", "-1"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith("run_pipeline: --labels must be 0"), result.stderr


def test_imagenet_mae_head_count_is_recorded_or_given(tmp_path):
    import pytest
    import torch

    from common.errors import TskdError

    weights = {"blocks.0.attn.qkv.weight": torch.zeros(576, 192)}
    torch.save({"model": weights, "args": {"num_heads": 12}}, tmp_path / "recorded.pth")
    torch.save(weights, tmp_path / "bare.pth")
    assert pipeline_config.imagenet_mae_heads(str(tmp_path / "recorded.pth"), 0) == 12
    assert pipeline_config.imagenet_mae_heads(str(tmp_path / "bare.pth"), 12) == 12
    with pytest.raises(TskdError, match="give --num_heads"):
        pipeline_config.imagenet_mae_heads(str(tmp_path / "bare.pth"), 0)
    with pytest.raises(TskdError, match="records 12 attention heads, but --num_heads is 3"):
        pipeline_config.imagenet_mae_heads(str(tmp_path / "recorded.pth"), 3)


def test_a_stage_run_in_process_raises_our_one_line_not_monai_s_instantiate_traceback(demo_small, tmp_path):
    """LiteMedSAM needs a multiple of 32: 48 passes the bundle's own x16 check and fails while MONAI builds the
    teacher. In process, the caller gets our SettingError itself, not MONAI's "Failed to instantiate" wrapper."""
    import pytest

    from common.errors import TskdError
    from common.pipeline.bundles import run_bundle

    with pytest.raises(TskdError) as raised:
        run_bundle("demo", "teacher", ("train",), str(tmp_path / "teacher"),
                   {"dataset_dir": demo_small, "image_size": 48, "steps": 1, "epoch_length": 1})
    message = raised.value.message
    assert "multiple of 32" in message and "LiteMedSAM" in message and "\n" not in message
    assert raised.value.__cause__ is None and "Failed to instantiate" not in str(raised.value)


def test_a_bundle_s_values_are_read_through_its_declared_properties(demo_small):
    from common.pipeline.bundles import bundle_properties

    teacher = bundle_properties("demo", "teacher", {"dataset_dir": demo_small})
    assert teacher.lora_rank == 4 and teacher.image_size == 128 and teacher.in_channels == 1
    assert teacher.num_classes == 3  # from the dataset's datalist: background, grey and white matter
    assert bundle_properties("demo", "student", {"image_size": 64}).image_size == 64
    assert bundle_properties("demo", "student").lora_rank is None  # optional, and not a student's


def test_a_dataset_prepared_at_another_side_runs_at_that_side_unless_told(demo_small, tmp_path, capsys):
    """demo_small is prepared at 64 (its datalist says so); the demo bundles' own side is 128. Without
    --image_size the run and the grid use 64 and say why; --image_size still wins; a set prepared at the bundles'
    side adds no override."""
    import json
    import shutil

    from common.pipeline.config import RunConfig, prepared_image_size
    from common.pipeline.grid.cells import Grid
    from common.pipeline.grid.spec import GridSpec

    assert RunConfig(data_dir=demo_small, out=str(tmp_path / "run")).checked().image_size == 64
    assert "prepared at 64x64" in capsys.readouterr().out
    assert RunConfig(data_dir=demo_small, image_size=128, out=str(tmp_path / "run")).checked().image_size == 128
    grid = Grid(GridSpec(data_dir=demo_small, methods="scratch", labels="2", seeds=1, tracking="none",
                         out=str(tmp_path / "grid")))
    grid.prepare()
    assert grid.spec.image_size == 64 and json.load(open(tmp_path / "grid" / "grid.json"))["image_size"] == 64
    same = tmp_path / "at128"
    shutil.copytree(demo_small, same)
    info = json.load(open(same / "datalist.json"))
    json.dump({**info, "image_size": 128}, open(same / "datalist.json", "w"))
    assert prepared_image_size("demo", str(same)) == 0
    json.dump({k: v for k, v in info.items() if k != "image_size"}, open(same / "datalist.json", "w"))
    assert prepared_image_size("demo", str(same)) == 0
