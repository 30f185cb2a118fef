"""The main job end to end (smoke profile: one epoch per stage, 64² images), and its stage skipping."""

import json
import os
import subprocess
import sys

from conftest import ROOT


def pipeline(*args):
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "run_pipeline.py"), "--profile", "smoke", "--image_size", "64",
           *args]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def stages(output):
    """The pipeline's own stage lines (the bundles' logs are interleaved on stdout)."""
    return [line for line in output.splitlines() if line.startswith("=== ")]


def test_pipeline_writes_metrics_and_skips_done_stages(demo_small, tmp_path):
    out = tmp_path / "run"
    first = pipeline("--data_dir", demo_small, "--out", str(out), "--method", "tskd")
    for stage in ("teacher: training", "augmented set", "synth: training", "synthetic transfer set: sampling",
                  "pretrain: training", "student: training"):
        assert stage in first
    synthetic = [d for d in os.listdir(out / "synth") if d.startswith("synthetic_")]
    manifest = json.load(open(out / "synth" / synthetic[0] / "manifest.json"))
    assert manifest["count"] == 8 and len(manifest["generator_sha256"]) == 64
    assert json.load(open(out / "pretrain_tskd" / "done.json"))["overrides"]["transfer_file"].startswith(
        str(out / "synth" / synthetic[0]))
    metrics = json.load(open(out / "metrics.json"))
    assert set(metrics) == {"teacher", "student"}
    for report in metrics.values():
        assert {"mean_dice", "mean_hd95", "mean_iou", "per_class"} <= set(report)
        assert set(report["per_class"]) == {"grey_matter", "white_matter"}
        assert set(report["per_class"]["grey_matter"]) == {"dice", "hd95", "iou"}
    assert "## student" in (out / "summary.md").read_text()
    # Same inputs: every training stage is skipped; another method reuses the teacher only.
    again = stages(pipeline("--data_dir", demo_small, "--out", str(out), "--method", "tskd"))
    assert not any(": training (" in line for line in again)
    assert sum("already trained" in line for line in again) == 4  # teacher, synth, pretrain, student
    scratch = stages(pipeline("--data_dir", demo_small, "--out", str(out), "--method", "scratch"))
    assert any("teacher: already trained" in line for line in scratch)
    assert any("student: training" in line for line in scratch) and not any("pretrain" in line for line in scratch)


def test_prepare_folder_then_pipeline_on_own_images(tmp_path):
    from dataset_trees import make_pairs

    src = make_pairs(str(tmp_path / "mine"), mask_dir="labels", n=8, values=[1, 2], ext="png")
    prepared = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "prepare_data.py"), "folder", "--src", src,
                               "--out", str(tmp_path / "data"), "--classes", "cyst=1,tumour=2", "--image_size", "64"],
                              capture_output=True, text=True)
    assert prepared.returncode == 0, prepared.stderr
    out = tmp_path / "run"
    pipeline("--dataset", "folder", "--data_dir", str(tmp_path / "data"), "--out", str(out), "--method", "tskd")
    metrics = json.load(open(out / "metrics.json"))
    assert set(metrics["student"]["per_class"]) == {"cyst", "tumour"}
    assert (out / "predictions.png").stat().st_size > 1000
