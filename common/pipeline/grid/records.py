"""A grid cell's record: run once, finished records reused, failures recorded with one line, each finished
cell logged to MLflow."""

from __future__ import annotations

import math
import os
import time
import traceback

from common.errors import TskdError, first_line
from common.provenance import read_json, write_json

__all__ = ["CellRecords", "failure"]


def failure(e: BaseException) -> str:
    """One line for a failed cell: a TskdError's message, the exit message of a failed stage, or the error."""
    return e.message if isinstance(e, TskdError) else first_line(e) if str(e) else type(e).__name__


class CellRecords:
    """The records of a grid's cells in ``OUT/cells`` and the MLflow runs beside them."""

    def __init__(self, out: str, n_train: int, transfer_source: str, tracking=None, params: dict | None = None) -> None:
        self.folder = os.path.join(out, "cells")
        os.makedirs(self.folder, exist_ok=True)
        self.n_train, self.transfer_source, self.tracking, self.params = n_train, transfer_source, tracking, params or {}

    def path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.json")

    def get(self, name: str) -> dict:
        return read_json(self.path(name))

    def save(self, name: str, record: dict) -> None:
        write_json(self.path(name), record)  # a crash never leaves half a record

    def set_aside(self, name: str) -> str:
        """Move a record out of the grid (to ``cells/stale/``, kept, never overwritten) so its cell runs again."""
        folder = os.path.join(self.folder, "stale")
        os.makedirs(folder, exist_ok=True)
        target, n = os.path.join(folder, f"{name}.json"), 1
        while os.path.exists(target):
            n += 1
            target = os.path.join(folder, f"{name}.{n}.json")
        os.replace(self.path(name), target)
        return target

    def all(self) -> list[dict]:
        return [read_json(os.path.join(self.folder, f)) for f in sorted(os.listdir(self.folder)) if f.endswith(".json")]

    def row(self, method, labels, transfer, seed, report=None, status="done", error="", **extra) -> dict:
        row = {"method": method, "labels": labels, "labels_n": self.n_train if labels == "all" else int(labels),
               "transfer": transfer or "", "transfer_source": self.transfer_source if transfer else "",
               "seed": seed, "status": status, "error": error, **extra}
        if report:
            row.update(mean_dice=report["mean_dice"], mean_hd95=report["mean_hd95"], mean_iou=report["mean_iou"],
                       hd95_unit=report.get("hd95_unit", ""))
            for c, values in report["per_class"].items():
                row.update({f"{k}_{c}": values.get(k) for k in ("dice", "hd95", "iou")})
        return row

    def run(self, name: str, method: str, labels: str, transfer: int, seed: int, work) -> dict:
        """Run ``work() -> (report, extra, artefacts)`` once: a finished record is reused, a failure recorded."""
        record = self.get(name)
        if record.get("row", {}).get("status") in ("done", "skipped"):
            print(f"--- {name}: done before, skipping", flush=True)
            return record
        print(f"\n##### cell {name}", flush=True)
        start = time.time()
        try:
            report, extra, artefacts = work()
            row = self.row(method, labels, transfer, seed, report, **{"seconds": round(time.time() - start), **extra})
            record = {"row": row, "per_image_class_dice": report.get("per_image", {}).get("dice", [])}
            self.log(name, row, artefacts)
        except KeyboardInterrupt:
            raise
        except (Exception, SystemExit) as e:  # a failed stage; the grid goes on
            message = failure(e)
            print(f"!!! cell {name} failed: {message}", flush=True)
            if not isinstance(e, (TskdError, SystemExit)):
                traceback.print_exc()
            record = {"row": self.row(method, labels, transfer, seed, status="failed", error=message)}
        self.save(name, record)
        return record

    def log(self, name: str, row: dict, artefacts: list[str]) -> None:
        if not self.tracking or row["status"] != "done":
            return
        mlflow = self.tracking
        keys = ("method", "labels", "transfer", "seed", "transfer_source")
        with mlflow.start_run(run_name=name):
            machine = {"machine": row["machine"]} if row.get("machine") else {}
            mlflow.set_tags({**{k: str(row[k]) for k in keys}, **machine})
            mlflow.log_params({**self.params, **{k: row[k] for k in keys}})
            metrics = {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and k not in ("seed", "labels_n", "transfer") and not math.isnan(float(v))}
            mlflow.log_metrics(metrics)
            for path in artefacts:
                if os.path.isfile(path):
                    mlflow.log_artifact(path)


def mlflow_store(out: str, dataset: str):
    """MLflow with a local store under ``out`` (SQLite, as the bundles' ``--tracking mlflow``; MLflow 3 refuses
    new plain-folder stores), artefacts beside it, experiment ``tskd-grid-<dataset>``."""
    import mlflow

    mlflow.set_tracking_uri("sqlite:///" + os.path.join(out, "mlruns.db"))
    name = f"tskd-grid-{dataset}"
    if mlflow.get_experiment_by_name(name) is None:
        mlflow.create_experiment(name, artifact_location="file://" + os.path.join(out, "mlartifacts"))
    mlflow.set_experiment(name)
    return mlflow
