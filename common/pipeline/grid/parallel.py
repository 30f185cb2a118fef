"""The grid's cells on several workers: processes on this machine (``--workers N``: one cell per process, each
pinned to its own GPU when there are GPUs), or a Ray cluster (``--executor ray``; Ray's local mode runs on one
machine). No scheduler of our own: ``concurrent.futures`` or Ray hands out the cells.

What cells share is built once: the teachers before any cell starts (here, in order), the transfer sets, teacher
caches and pre-trained encoders by whichever worker reaches them first while the others wait for its lock
(``common.provenance``). Workers return what they measured; only this process writes the cell records and MLflow.
"""

from __future__ import annotations

import dataclasses
import os
import time

from common.errors import TskdError
from common.pipeline.grid.cells import Cell, Grid
from common.pipeline.grid.records import failure

__all__ = ["run_parallel", "work_in_worker"]


def work_in_worker(spec: dict, cell: dict) -> dict:
    """One cell in a worker process: ``{"ok": (report, extra, artefacts)}`` or ``{"error": one line}``."""
    from common.pipeline.grid.spec import GridSpec

    start = time.time()
    if spec.get("worker_threads"):
        import torch

        torch.set_num_threads(spec["worker_threads"])
    try:
        grid = Grid(GridSpec(**{**spec, "tracking": "none"}))
        grid.prepare()
        report, extra, artefacts = grid.work(Cell(**cell))
        return {"ok": (report, {**extra, "seconds": round(time.time() - start)}, artefacts)}
    except Exception as e:  # sent back as a line: the cell is recorded as failed, the grid goes on
        return {"error": failure(e)}


def _pin(devices, threads: int) -> None:
    """Worker start: its own GPU (from the queue of free ones) and its share of the CPU threads."""
    import torch

    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())
    torch.set_num_threads(threads)


def _result(outcome: dict):
    if "error" in outcome:
        raise TskdError(outcome["error"])
    return outcome["ok"]


def run_parallel(grid: Grid, cells: list[Cell], workers: int, executor: str = "local", address: str = "") -> None:
    """Run the cells not finished before on ``workers`` workers; records are written here as cells finish."""
    todo = []
    for cell in cells:
        if cell.kind == "teacher":
            grid.run_cell(cell)  # shared by every cell of its budget: built first, here
        elif grid.records.get(cell.name).get("row", {}).get("status") not in ("done", "skipped"):
            todo.append(cell)
        else:
            grid.run_cell(cell)  # prints "done before, skipping"
    if not todo:
        return
    spec = dataclasses.asdict(grid.spec)
    print(f"\n##### {len(todo)} cells on {workers} {executor} workers", flush=True)
    if executor == "ray":
        _run_ray(grid, todo, spec, workers, address)
    else:
        _run_local(grid, todo, spec, workers)


def _run_local(grid: Grid, todo: list[Cell], spec: dict, workers: int) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    import torch

    context = multiprocessing.get_context("spawn")
    gpus = torch.cuda.device_count()
    devices = None
    if gpus:
        devices = context.Queue()
        for i in range(workers):
            devices.put(i % gpus)
    threads = grid.spec.worker_threads or max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_pin, initargs=(devices, threads)) as pool:
        futures = {pool.submit(work_in_worker, spec, dataclasses.asdict(cell)): cell for cell in todo}
        for future in as_completed(futures):
            cell, outcome = futures[future], future.result()
            grid.run_cell(cell, work=lambda: _result(outcome))


def _run_ray(grid: Grid, todo: list[Cell], spec: dict, workers: int, address: str) -> None:
    try:
        import ray
    except ImportError:
        raise TskdError("--executor ray needs Ray: pip install 'ray[default]' (or use --executor local).") from None
    import torch

    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=True)
    else:  # local mode: a one-machine cluster of ``workers`` CPUs, with a small object store (records are small)
        ray.init(num_cpus=workers, object_store_memory=200 * 2**20, include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=True)
    try:
        gpus = 1 if torch.cuda.is_available() else 0
        remote = ray.remote(num_cpus=1, num_gpus=gpus)(work_in_worker)
        pending = {remote.remote(spec, dataclasses.asdict(cell)): cell for cell in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            cell = pending.pop(done[0])
            outcome = ray.get(done[0])
            grid.run_cell(cell, work=lambda: _result(outcome))
    finally:
        if not address:
            ray.shutdown()  # the local cluster this run started
