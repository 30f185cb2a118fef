"""What a comparison grid writes: ``results.csv``, ``tables.md`` in the paper's layout (mean ± sd over seeds,
the best student per column marked), paired tests over test images, the Dice plots, and the teacher's
information about the labels.

The paired tests treat the test image as the unit of replication: each method's per-image Dice is averaged
over its seeds first (seeds share the teacher and the pre-training, so image x seed pairs are not independent),
the several comparisons in one table are corrected together (Holm), and every p is printed with its n.

``scripts/run_grid.py`` runs the cells; everything here reads their records, so tables and plots can be
rewritten from a grid's folder at any time (``run_grid.py --report_only``).
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

__all__ = ["COLUMNS", "write_results", "read_results", "summarise", "image_scores", "paired_test", "holm",
           "smallest_p", "compare_methods", "write_tables",
           "plot_dice_vs_labels", "plot_dice_vs_transfer", "mutual_information", "METHOD_NAMES"]

# Rows that are not students trained by a pre-training method.
TEACHER, REFERENCE = "teacher", "dynunet"
METHOD_NAMES = {"scratch": "scratch", "imagenet_mae": "ImageNet-MAE init", "mae": "MAE", "mocov3": "MoCo v3",
                "takd": "TA-KD", "tskd": "TS-KD", TEACHER: "teacher (SAM-LoRA)", REFERENCE: "DynUNet, nnU-Net 2D recipe"}
COLUMNS = ["method", "labels", "labels_n", "transfer", "transfer_source", "seed", "status", "mean_dice", "mean_hd95",
           "mean_iou", "hd95_unit", "pretrain_seconds", "train_seconds", "seconds", "machine", "teacher_sha256", "error"]


def _label_order(value: str) -> float:
    return math.inf if value == "all" else float(value)


def write_results(rows: Sequence[dict], path: str, class_names: Sequence[str]) -> str:
    """One CSV row per cell and seed, per-class Dice / HD95 / IoU after the fixed columns."""
    per_class = [f"{k}_{c}" for c in class_names for k in ("dice", "hd95", "iou")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS + per_class, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in COLUMNS + per_class})
    return path


def read_results(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def summarise(values: Iterable) -> tuple[float, float, int]:
    """Mean, sample sd (0 for one value) and count of the finite values."""
    finite = [v for v in (_float(x) for x in values) if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan, 0
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), sd, len(finite)


def image_scores(per_seed: Sequence[Sequence[Sequence[float | None]]]) -> list[float | None]:
    """One score per test image: the mean Dice over classes, then over seeds.

    A class that neither the prediction nor the ground truth has on an image (``None`` in an evaluation's
    per-image values) is an agreement and scores 1, so a method that rightly leaves an image empty is credited
    where one that paints a false positive scores 0.

    Args:
        per_seed: per seed, per image, per class Dice (``None``: both empty). Seeds must list the same images.

    Returns:
        Per image, the seed-averaged mean Dice (``None`` for an image no seed scored).
    """
    if not per_seed:
        return []
    lengths = {len(images) for images in per_seed}
    if len(lengths) != 1:
        raise ValueError(f"seeds scored different numbers of test images: {sorted(lengths)}")
    out = []
    for i in range(lengths.pop()):
        values = [float(np.mean([1.0 if v is None else v for v in seed[i]])) for seed in per_seed if len(seed[i])]
        out.append(float(np.mean(values)) if values else None)
    return out


def smallest_p(n: int) -> float:
    """The smallest two-sided p the exact Wilcoxon signed-rank test can give with ``n`` non-zero differences."""
    return min(1.0, 2.0 * 0.5 ** n) if n > 0 else 1.0


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict:
    """Wilcoxon signed-rank test of paired per-image scores ``a`` vs ``b`` (pairs with a missing value are
    dropped; zero differences are left out of the ranks, as Wilcoxon's own rule).

    Returns:
        ``n`` (pairs), ``n_nonzero`` (pairs that differ), the mean and median difference a - b, the two-sided
        ``p`` (1.0 when every difference is zero) and ``min_p``, the smallest p these pairs could give.
    """
    from scipy.stats import wilcoxon

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None
             and not (math.isnan(x) or math.isnan(y))]
    if not pairs:
        return {"n": 0, "n_nonzero": 0, "mean_diff": math.nan, "median_diff": math.nan, "p": math.nan, "min_p": 1.0}
    diff = np.array([x - y for x, y in pairs], dtype=np.float64)
    nonzero = int(np.count_nonzero(diff))
    p = 1.0 if not nonzero else float(wilcoxon(diff).pvalue)
    return {"n": len(pairs), "n_nonzero": nonzero, "mean_diff": float(diff.mean()),
            "median_diff": float(np.median(diff)), "p": p, "min_p": smallest_p(nonzero)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of the p-values of several tests in one family (NaN stays NaN)."""
    finite = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (len(finite) - rank) * p))
        adjusted[i] = running
    return adjusted


def compare_methods(scores: dict[str, list[float | None]], method: str = "tskd") -> dict[str, dict]:
    """``method`` against every other entry of ``scores`` (name -> per-image scores from ``image_scores``),
    one family of tests: ``paired_test`` results with ``p_holm`` added."""
    if method not in scores:
        return {}
    results = {other: paired_test(scores[method], values) for other, values in scores.items() if other != method}
    for result, adjusted in zip(results.values(), holm([r["p"] for r in results.values()])):
        result["p_holm"] = adjusted
    return results


def _fmt(mean: float, sd: float, n: int, digits: int) -> str:
    if n == 0:
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if n > 1 else "")


def _rows_for(rows: Sequence[dict], labels: str, transfer: str) -> dict[str, list[dict]]:
    """Finished rows of one table (a label budget and a transfer size): method -> rows over seeds. Rows that
    do not depend on the transfer set (scratch, ImageNet-MAE, the teacher, the reference) join every table."""
    out: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if row["status"] != "done" or row["labels"] != labels:
            continue
        if row["transfer"] in ("", "0", None) or row["transfer"] == transfer:
            out[row["method"]].append(row)
    return out


def write_tables(rows: Sequence[dict], path: str, class_names: Sequence[str], *, tests: dict | None = None,
                 header: Sequence[str] = (), footer: Sequence[str] = (), alpha: float = 0.05,
                 val_labels: int = 0) -> str:
    """``tables.md``: per label budget and transfer size, rows = teacher, reference and student methods,
    columns = per-class Dice and HD95 and their means (and IoU for a single-class task), as mean ± sd over
    seeds; the best student per column in bold (highest Dice / IoU, lowest HD95).

    ``tests``: (labels, transfer) -> {other method: ``compare_methods`` result of TS-KD vs it}; written under
    each table with whether the difference is real at ``alpha`` after Holm's correction.
    ``val_labels``: the validation masks every row also used (checkpoint selection, early stopping), counted in
    each table's title beside the training budget.
    """
    unit = next((r.get("hd95_unit") for r in rows if r.get("hd95_unit")), "mm")
    columns = [(f"dice_{c}", f"{c} Dice", 4, max) for c in class_names] + [("mean_dice", "mean Dice", 4, max)]
    columns += [(f"hd95_{c}", f"{c} HD95 ({unit})", 2, min) for c in class_names]
    columns += [("mean_hd95", f"mean HD95 ({unit})", 2, min)]
    if len(class_names) == 1:
        columns += [("mean_iou", "mIoU", 4, max)]
    budgets = sorted({r["labels"] for r in rows}, key=_label_order)
    transfers = sorted({r["transfer"] for r in rows if r["transfer"] not in ("", "0", None)}, key=float) or [""]
    order = [TEACHER, REFERENCE, "scratch", "imagenet_mae", "mae", "mocov3", "takd", "tskd"]
    lines = list(header)
    for labels in budgets:
        for transfer in transfers:
            by_method = _rows_for(rows, labels, transfer)
            if not by_method:
                continue
            n_images = next(iter(by_method.values()))[0].get("labels_n", "")
            title = f"### {labels} labels" + (f" ({n_images} images)" if labels == "all" and n_images else "")
            title += f" (+ {val_labels} for validation)" if val_labels else ""
            title += f", transfer set of {transfer} images" if transfer else ""
            methods = [m for m in order if m in by_method] + sorted(m for m in by_method if m not in order)
            stats = {m: {key: summarise(r.get(key) for r in by_method[m]) for key, *_ in columns} for m in methods}
            students = [m for m in methods if m not in (TEACHER, REFERENCE)]
            best = {}
            for key, _, _, pick in columns:
                finite = [(stats[m][key][0], m) for m in students if stats[m][key][2]]
                if finite:
                    best[key] = pick(finite)[1]
            lines += ["", title, "", "| method | seeds | " + " | ".join(c[1] for c in columns) + " |",
                      "|---|---|" + "---|" * len(columns)]
            for m in methods:
                cells = []
                for key, _, digits, _ in columns:
                    text = _fmt(*stats[m][key], digits)
                    cells.append(f"**{text}**" if best.get(key) == m else text)
                lines.append(f"| {METHOD_NAMES.get(m, m)} | {len(by_method[m])} | " + " | ".join(cells) + " |")
            lines += _test_lines((tests or {}).get((labels, transfer), {}), alpha)
    lines += ["", *footer]
    with open(path, "w") as f:
        f.write("\n".join(lines).rstrip("\n") + "\n")
    return path


def _test_lines(results: dict[str, dict], alpha: float) -> list[str]:
    """The sentences under a table: TS-KD against each row, with n, the Holm-adjusted p and the verdict."""
    lines = []
    for other, result in results.items():
        if not result["n"]:
            continue
        p = result.get("p_holm", result["p"])
        if result["min_p"] >= alpha:
            verdict = f"n = {result['n_nonzero']} differing images is too small for any p < {alpha:g}"
        elif p < alpha:
            verdict = "TS-KD better" if result["mean_diff"] > 0 else "TS-KD worse"
        else:
            verdict = "inside the noise"
        lines.append(f"- TS-KD vs {METHOD_NAMES.get(other, other)}: mean per-image Dice difference "
                     f"{result['mean_diff']:+.4f} (median {result['median_diff']:+.4f}), n = {result['n']} test images "
                     f"(seeds averaged per image), Wilcoxon signed-rank p = {result['p']:.3g}, Holm-adjusted over "
                     f"{len(results)} comparisons p = {p:.3g}: **{verdict}**.")
    return lines


def _plot_lines(series: dict[str, list[tuple[float, float, float]]], xlabel: str, title: str, path: str,
                xticks: dict[float, str] | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, points in series.items():
        points = sorted(p for p in points if not math.isnan(p[1]))
        if not points:
            continue
        x, y, sd = (np.array(v) for v in zip(*points))
        style = {"linestyle": ":" if method == TEACHER else "--" if method == REFERENCE else "-",
                 "marker": "o", "capsize": 3}
        ax.errorbar(x, y, yerr=sd, label=METHOD_NAMES.get(method, method), **style)
    if xticks:
        ax.set_xticks(list(xticks), list(xticks.values()))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean Dice (test split)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_dice_vs_labels(rows: Sequence[dict], path: str, transfer: str, title: str = "") -> str:
    """Mean Dice against the number of labelled images, one line per method, error bars = sd over seeds
    (paper Fig. 3); methods that use a transfer set at the size ``transfer``."""
    series: dict[str, list] = defaultdict(list)
    ticks = {}
    for labels in sorted({r["labels"] for r in rows}, key=_label_order):
        for method, group in _rows_for(rows, labels, transfer).items():
            x = float(group[0]["labels_n"])
            ticks[x] = f"{int(x)}" if labels != "all" else f"all ({int(x)})"
            mean, sd, _ = summarise(r["mean_dice"] for r in group)
            series[method].append((x, mean, sd))
    return _plot_lines(series, "labelled training images", title or "Dice against the label budget", path, ticks)


def plot_dice_vs_transfer(rows: Sequence[dict], path: str, labels: str, title: str = "") -> str:
    """Mean Dice against the transfer-set size per pre-training method at one label budget (paper Figs. 5-9)."""
    series: dict[str, list] = defaultdict(list)
    for row in rows:
        if row["status"] != "done" or row["labels"] != labels or row["transfer"] in ("", "0", None):
            continue
        series[(row["method"], float(row["transfer"]))].append(row["mean_dice"])
    lines: dict[str, list] = defaultdict(list)
    for (method, size), values in series.items():
        mean, sd, _ = summarise(values)
        lines[method].append((size, mean, sd))
    sizes = sorted({size for _, size in series})
    return _plot_lines(lines, "transfer-set images", title or f"Dice against the transfer-set size ({labels} labels)",
                       path, {s: str(int(s)) for s in sizes})


def mutual_information(pred: np.ndarray, label: np.ndarray, num_classes: int) -> dict:
    """I(T;Y) in bits between predicted classes ``pred`` and label classes ``label`` (same-shape integer
    arrays, every pixel a sample), with the label entropy H(Y) that bounds it."""
    pred, label = np.asarray(pred).ravel().astype(np.int64), np.asarray(label).ravel().astype(np.int64)
    joint = np.bincount(pred * num_classes + label, minlength=num_classes * num_classes).astype(np.float64)
    joint = joint.reshape(num_classes, num_classes) / max(joint.sum(), 1.0)
    pt, py = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    mi = float((joint[nz] * np.log2(joint[nz] / (pt @ py)[nz])).sum())
    h_y = float(-(py[py > 0] * np.log2(py[py > 0])).sum())
    return {"mi_bits": mi, "label_entropy_bits": h_y}

