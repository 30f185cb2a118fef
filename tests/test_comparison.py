"""The comparison grid: paired tests, MI, tables and plots from records, and resuming after an interrupted
cell (a real tiny grid on the demo data, smoke budgets)."""

import csv
import math
import os
import sys

import numpy as np
import pytest

from conftest import ROOT
from common.comparison import mutual_information, paired_test, write_results, write_tables

sys.path.insert(0, os.path.join(ROOT, "scripts"))


def test_mutual_information_on_hand_computed_cases():
    y = np.array([0, 0, 1, 1])
    perfect = mutual_information(y, y, 2)
    assert perfect["mi_bits"] == pytest.approx(1.0) and perfect["label_entropy_bits"] == pytest.approx(1.0)
    assert mutual_information(np.zeros(4, int), y, 2)["mi_bits"] == pytest.approx(0.0)  # constant teacher
    assert mutual_information(1 - y, y, 2)["mi_bits"] == pytest.approx(1.0)  # swapped classes carry it all
    # p(t,y) = [[3/8, 1/8], [1/8, 3/8]]: I = 1 - H(1/4) bits
    t, yy = np.array([0, 0, 0, 1, 1, 1, 1, 0]), np.array([0, 0, 0, 0, 1, 1, 1, 1])
    h = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    assert mutual_information(t, yy, 2)["mi_bits"] == pytest.approx(1 - h)


def test_paired_test_drops_missing_pairs_and_calls_ties_noise():
    a, b = [0.9, 0.8, 0.85, 0.7, 0.95, 0.9, None], [0.8, 0.7, 0.8, 0.6, 0.9, 0.8, 0.5]
    result = paired_test(a, b)
    assert result["n"] == 6 and result["mean_diff"] == pytest.approx(0.0833, abs=1e-3)
    assert result["p"] == pytest.approx(0.03125)  # all six differences positive: 2 / 2**6
    assert paired_test([0.5, 0.5], [0.5, 0.5])["p"] == 1.0


def test_tables_mark_the_best_student_and_say_whether_a_difference_is_real(tmp_path):
    rows = []
    for seed, (s, t) in enumerate([(0.70, 0.80), (0.72, 0.82)]):
        for method, dice, hd in (("scratch", s, 9.0), ("tskd", t, 7.0), ("teacher", 0.95, 1.0), ("dynunet", 0.9, 2.0)):
            rows.append({"method": method, "labels": "5", "labels_n": 5, "transfer": "160" if method == "tskd" else "",
                         "seed": seed, "status": "done", "mean_dice": dice, "mean_hd95": hd, "mean_iou": dice - 0.1,
                         "hd95_unit": "mm", "dice_tumour": dice, "hd95_tumour": hd, "iou_tumour": dice - 0.1})
    rows.append({"method": "mae", "labels": "5", "labels_n": 5, "transfer": "160", "seed": 0, "status": "failed",
                 "error": "stage failed"})
    write_results(rows, str(tmp_path / "results.csv"), ["tumour"])
    with open(tmp_path / "results.csv") as f:
        read = list(csv.DictReader(f))
    assert len(read) == 9 and read[0]["dice_tumour"] == "0.7"
    tests = {("5", "160"): {"scratch": paired_test([0.8, 0.82, 0.81, 0.79, 0.83, 0.84], [0.7] * 6)}}
    write_tables(read, str(tmp_path / "tables.md"), ["tumour"], tests=tests)
    text = (tmp_path / "tables.md").read_text()
    assert "| TS-KD | 2 | **0.8100 ± 0.0141** |" in text  # best student Dice, bold; sd over two seeds
    assert "| teacher (SAM-LoRA) | 2 | 0.9500 ± 0.0000 |" in text  # not marked: not a student
    assert "**7.00 ± 0.00**" in text  # the lowest HD95 is the best
    assert "mIoU" in text  # single-class task
    assert "TS-KD vs scratch" in text and "**TS-KD better**" in text
    assert "MAE" not in text.split("###")[1].split("\n- ")[0]  # the failed cell is not a row


def test_grid_resumes_after_an_interrupted_cell_and_writes_tables_and_plots(demo_small, tmp_path, monkeypatch):
    import run_grid

    out = tmp_path / "grid"
    argv = ["--data_dir", demo_small, "--profile", "smoke", "--image_size", "64", "--methods", "tskd",
            "--labels", "3", "--seeds", "2", "--lora_ranks", "none", "--out", str(out), "--qualitative", "2",
            "--transfer_source", "augment"]
    real_evaluate, calls = run_grid.rp.evaluate_bundle, []

    def interrupted(dataset, stage, root, overrides):
        calls.append(root)
        if "tskd_labels3_transfer8_seed1235" in root:
            raise KeyboardInterrupt  # Ctrl-C while the last cell evaluates
        if "labels3_seed1235" in root and "reference" in root:
            sys.exit("stage failed (exit 1): python -m monai.bundle run ...")  # a failing stage
        return real_evaluate(dataset, stage, root, overrides)

    monkeypatch.setattr(run_grid.rp, "evaluate_bundle", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_grid.main(argv)
    cells = sorted(os.listdir(out / "cells"))
    assert "dynunet_labels3_seed1235.json" in cells and "tskd_labels3_transfer8_seed1235.json" not in cells
    monkeypatch.setattr(run_grid.rp, "evaluate_bundle", real_evaluate)
    trained = []
    real_train = run_grid.rp.train_bundle
    monkeypatch.setattr(run_grid.rp, "train_bundle", lambda *a, **k: trained.append(a[2]) or real_train(*a, **k))
    run_grid.main(argv)
    # Finished cells are not run again; the failed one and the interrupted one are.
    assert not any("seed1234" in root for root in trained)
    assert any("reference/labels3_seed1235" in root for root in trained)
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["method"], r["seed"]) for r in rows} == {("teacher", "1234"), ("dynunet", "1234"), ("dynunet", "1235"),
                                                      ("tskd", "1234"), ("tskd", "1235")}
    assert all(r["status"] == "done" for r in rows)
    assert all(0.0 <= float(r["mean_dice"]) <= 1.0 for r in rows)
    tables = (out / "tables.md").read_text()
    for fragment in ("### 3 labels, transfer set of 8 images", "| TS-KD | 2 |", "| DynUNet (nnU-Net 2D plan) | 2 |",
                     "TS-KD vs DynUNet", "Wilcoxon", "## Teacher checks", "## Pre-training wall time", "GFLOP",
                     "## Transfer sets", "Transfer set: 8 images, the labelled training images and their affine views"):
        assert fragment in tables, fragment
    for png in ("dice_vs_labels.png", "qualitative.png"):
        assert (out / png).stat().st_size > 5000
    # Another transfer source in the same folder would mix its cells with these: one clear error.
    with pytest.raises(SystemExit) as refused:
        run_grid.main([*argv[:-2], "--transfer_source", "unlabelled"])
    assert "--transfer_source 'augment' there, 'unlabelled' now" in str(refused.value.code)
    import mlflow

    mlflow.set_tracking_uri("sqlite:///" + str(out / "mlruns.db"))
    runs = mlflow.search_runs(experiment_names=["tskd-grid-demo"])
    assert len(runs) >= 5 and {"tskd", "dynunet", "teacher"} <= set(runs["tags.method"])
    assert "metrics.mean_dice" in runs.columns and "metrics.dice_grey_matter" in runs.columns
