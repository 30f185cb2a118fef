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


def test_pipeline_writes_metrics_and_skips_done_stages(demo_small, tmp_path):
    out = tmp_path / "run"
    first = pipeline("--data_dir", demo_small, "--out", str(out), "--method", "tskd")
    for stage in ("teacher: training", "transfer set", "pretrain: training", "student: training"):
        assert stage in first
    metrics = json.load(open(out / "metrics.json"))
    assert set(metrics) == {"teacher", "student"}
    for report in metrics.values():
        assert {"mean_dice", "mean_hd95", "mean_iou", "per_class"} <= set(report)
        assert set(report["per_class"]) == {"grey_matter", "white_matter"}
        assert set(report["per_class"]["grey_matter"]) == {"dice", "hd95", "iou"}
    assert "## student" in (out / "summary.md").read_text()
    # Same inputs: every training stage is skipped; another method reuses the teacher only.
    again = pipeline("--data_dir", demo_small, "--out", str(out), "--method", "tskd")
    assert "training (" not in again and again.count("skipping") == 3
    scratch = pipeline("--data_dir", demo_small, "--out", str(out), "--method", "scratch")
    assert "teacher: already trained" in scratch and "student: training" in scratch and "pretrain" not in scratch
