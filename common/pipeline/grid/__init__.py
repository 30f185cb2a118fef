"""The comparison grid: which start gives the best student for this task and label budget.

Every cell (method x label budget x transfer-set size x seed) runs the stages of the main job through the same
bundles. The teacher of a label budget is trained once, with ``seed``, and every cell of that budget learns from
it. Each seed draws its own transfer set (and generator), teacher cache, pre-trained encoder and fine-tuning (data
order, augmentation, and the head's initialisation except TS-KD's, which its pre-training trains), so the spread
over seeds covers everything after the teacher; with ``shared_pretraining`` the seeds share the first seed's
transfer set and pre-training and vary only the fine-tuning. A DynUNet trained with nnU-Net's 2D recipe
(the ``<dataset>_reference`` bundle) on the same labels with the student's step budget is the reference row.

A finished cell is recorded in ``OUT/cells/`` and skipped when the grid is run again (after a crash or Ctrl-C the
grid continues where it stopped); a failed cell is recorded with its error and the grid goes on. Before the cells,
the teacher diagnostics: teachers with each ``lora_ranks`` rank (0: the untuned foundation model, its decoder
trained) at the largest label budget, their test Dice and the mutual information I(T;Y) between their predicted
classes and the labels of the labelled images.

Writes ``OUT/results.csv`` (one row per cell and seed), ``OUT/tables.md`` (mean ± sd over seeds, best student
marked, TS-KD against every other method by a Wilcoxon signed-rank test over test images (seeds averaged per image,
Holm-adjusted within a table), the teacher checks and diagnostics, each method's pre-training time, the student's
and the reference's GFLOP), ``OUT/dice_vs_labels.png``, ``OUT/dice_vs_transfer.png`` (with more than one transfer
size), ``OUT/qualitative.png``, and an MLflow run per cell (``OUT/mlruns.db``, a local store, unless tracking is
``none``).
"""

from __future__ import annotations

from common.pipeline.grid.cells import Grid
from common.pipeline.grid.report import qualitative, write_report
from common.pipeline.grid.spec import GridSpec, cell_id
from common.provenance import FolderLock

__all__ = ["Grid", "GridSpec", "cell_id", "run_grid"]


def run_grid(spec: GridSpec) -> Grid:
    """Run (or, with ``report_only``, only report) the grid ``spec`` describes, holding its output folder."""
    grid = Grid(spec)
    with FolderLock(grid.out, what="the grid folder"):
        grid.prepare()
        if spec.report_only:
            write_report(grid)
        else:
            write_report(grid, grid.run())
            if spec.qualitative:
                qualitative(grid)
    return grid
