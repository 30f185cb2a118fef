"""What running a stage in process saves, measured in one run.

    python scripts/bench/stage_startup.py --repeats 3

The same tiny stage (the demo student bundle: one training step, one validation, on a few 64² demo slices) is run
``--repeats`` times each way, alternating: in this process through MONAI's bundle workflow API (what tskd-run and
tskd-grid do by default, ``common.pipeline.bundles.run_bundle``) and in a process of its own
(``python -m monai.bundle run``, what ``--isolate_stages`` does and what every stage did before). Prints the median
seconds of each, their difference, and whether the two ways wrote the same weights: the start-up cost a stage pays in its own process (Python, torch, MONAI and
the package imported again). A grid cell runs two to four stages. Then ``--leak_runs`` more in-process runs, with
this process's resident memory after each: what a long grid in one process keeps. Writes ``--out`` (JSON) when
given.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def _rss_mb() -> float:
    """This process's resident memory now (Linux)."""
    import os

    with open("/proc/self/statm") as f:
        return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--leak_runs", type=int, default=10)
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    import torch

    from common.data import prepare_demo
    from common.pipeline.bundles import run_bundle

    torch.set_num_threads(2)
    work = tempfile.mkdtemp(prefix="tskd-startup-")
    data = f"{work}/data"
    prepare_demo(data, image_size=64, stride=9, block=2, gap=0)
    overrides = {"dataset_dir": data, "image_size": 64, "steps": 1, "epoch_length": 1, "batch_size": 2, "resume": False}
    times: dict[str, list[float]] = {"in process": [], "own process": []}
    run_bundle("demo", "student", ("train",), f"{work}/warm", overrides)  # first imports, paid once by any run
    for i in range(args.repeats):
        for way, isolate in (("in process", False), ("own process", True)):
            start = time.perf_counter()
            run_bundle("demo", "student", ("train",), f"{work}/{way.replace(' ', '_')}_{i}", overrides, isolate=isolate)
            times[way].append(time.perf_counter() - start)
    result = {way: round(statistics.median(t), 2) for way, t in times.items()}
    result["start-up per stage (s)"] = round(result["own process"] - result["in process"], 2)
    result["ratio own/in process"] = round(result["own process"] / result["in process"], 2)
    a = torch.load(f"{work}/in_process_0/models/model.pt", weights_only=True)
    b = torch.load(f"{work}/own_process_0/models/model.pt", weights_only=True)
    result["same weights in process and in its own process"] = all(torch.equal(a[k], b[k]) for k in a)
    rss = []
    for i in range(args.leak_runs):
        run_bundle("demo", "student", ("train",), f"{work}/leak_{i}", overrides)
        rss.append(_rss_mb())
    if rss:
        result["resident MB after in-process runs (first, last)"] = [rss[0], rss[-1]]
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**result, "runs": times}, f, indent=1)


if __name__ == "__main__":
    main()
