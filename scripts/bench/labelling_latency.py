"""How quickly tskd's MONAI Label app answers, measured over a real server in one run.

    python scripts/bench/labelling_latency.py --image_size 256 --requests 50

Makes the demo at ``--image_size`` (a few slices), trains a run with the smoke profile (latency does not depend on
how well the model is trained), starts ``monailabel start_server`` with ``scripts/monailabel_app`` on 127.0.0.1,
and times from this process: the first ``/infer/student`` after the server answers ``/info/`` (the student was
loaded at start-up), then ``--requests`` warm requests (median and 95th percentile), each beside the model's own
forward time that the server reports (``latencies.infer``), and the teacher's first and warm requests; once for
each ``--runtimes`` entry (the student in ONNX Runtime, the app's default, and in torch). Writes ``--out`` (JSON)
when given.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

APP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "monailabel_app")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _infer(url: str, model: str, image: str) -> tuple[float, float]:
    import requests

    start = time.perf_counter()
    answer = requests.post(f"{url}/infer/{model}", params={"image": image, "output": "json"},
                           files={"params": (None, json.dumps({"device": "cpu"}))}, timeout=300)
    seconds = time.perf_counter() - start
    answer.raise_for_status()
    return seconds, float(answer.json().get("latencies", {}).get("infer", float("nan")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--runtimes", default="onnx,torch",
                        help="how the server runs the student, each timed in its own server (--conf student_runtime)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    from common.data import prepare_demo
    from common.pipeline import cli

    work = tempfile.mkdtemp(prefix="tskd-label-latency-")
    data, run, studies = f"{work}/data", f"{work}/run", f"{work}/studies"
    prepare_demo(data, image_size=args.image_size, stride=9, block=2, gap=0)
    cli.run_main(["--profile", "smoke", "--data_dir", data, "--image_size", str(args.image_size), "--method", "scratch",
                  "--out", run])
    os.makedirs(studies)
    with open(f"{data}/datalist.json") as f:
        tests = [item["image"] for item in json.load(f)["test"]]
    for image in tests:
        os.symlink(os.path.join(data, image), os.path.join(studies, os.path.basename(image)))
    ids = [os.path.basename(image).replace(".nii.gz", "") for image in tests]
    results = {runtime: _serve(args, work, studies, run, ids, runtime) for runtime in args.runtimes.split(",")}
    print(json.dumps({r: {k: v for k, v in result.items() if not isinstance(v, list)} for r, result in results.items()},
                     indent=1))
    if len(results) == 2:
        (a, ra), (b, rb) = results.items()
        key = "student warm /infer p95 (ms)"
        print(f"warm p95: {a} {ra[key]} ms, {b} {rb[key]} ms ({rb[key] / ra[key]:.2f}x)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"image_size": args.image_size, "server threads": args.threads, "runtimes": results}, f, indent=1)


def _serve(args, work: str, studies: str, run: str, ids: list[str], runtime: str) -> dict:
    """Start the app with the student served by ``runtime``; time its requests."""
    import requests

    port = _port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    log = open(f"{work}/server_{runtime}.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "monailabel.main", "start_server", "--app", APP, "--studies",
                               studies, "--conf", "run", run, "--conf", "student_runtime", runtime,
                               "--host", "127.0.0.1", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        while True:
            if server.poll() is not None:
                sys.exit(f"the server exited; see {work}/server_{runtime}.log")
            try:
                if requests.get(f"{url}/info/", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        ready = time.perf_counter() - started
        first, first_forward = _infer(url, "student", ids[0])
        warm = [_infer(url, "student", ids[i % len(ids)]) for i in range(args.requests)]
        teacher_first, _ = _infer(url, "teacher", ids[0])
        teacher_warm = [_infer(url, "teacher", ids[i % len(ids)])[0] for i in range(5)]
    finally:
        server.terminate()
        server.wait(timeout=60)
    seconds = [w[0] for w in warm]
    forward = [w[1] for w in warm]
    return {"student runtime": runtime, "server ready (s)": round(ready, 1),
            "student first /infer (s)": round(first, 3), "student first forward (s)": first_forward,
            f"student warm /infer median of {args.requests} (ms)": round(1000 * statistics.median(seconds), 1),
            "student warm /infer p95 (ms)": round(1000 * _percentile(seconds, 0.95), 1),
            "student forward median (ms, server-reported, 10 ms resolution)": round(1000 * statistics.median(forward), 1),
            "teacher first /infer (s)": round(teacher_first, 2),
            "teacher warm /infer median of 5 (ms)": round(1000 * statistics.median(teacher_warm), 1),
            "student warm /infer seconds": [round(s, 4) for s in seconds]}


if __name__ == "__main__":
    main()
