import contextlib
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def demo_small(tmp_path_factory):
    """The real demo data (MNI152 from nilearn) at 64², few slices: fast enough for bundle runs."""
    from common.data import prepare_demo

    out = str(tmp_path_factory.mktemp("data") / "demo64")
    prepare_demo(out, image_size=64, stride=9, block=2, gap=0)
    return out


def skip_or_fail(reason: str) -> None:
    """Skip a test that cannot run here; under CI=true that is a failure (a missing input must not pass)."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: this test must run in CI)")
    pytest.skip(reason)


def run_ok(cmd: list[str], cwd: str, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a command; a non-zero exit fails the test with the end of its output."""
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


@pytest.fixture
def run_stage(capfd):
    """Run a stage's bundle in process, as tskd-run runs it: ``run_stage("demo_student", ("train",), root,
    **overrides)`` returns the run's log (its captured stdout and stderr); its errors propagate."""
    from common.pipeline.bundles import run_bundle

    def run(bundle: str, configs: tuple[str, ...], root, **overrides) -> str:
        capfd.readouterr()
        run_bundle(*bundle.split("_", 1), tuple(configs), str(root), overrides)
        out = capfd.readouterr()
        return out.out + out.err

    return run


@pytest.fixture(scope="session")
def trained_demo_student(tmp_path_factory):
    """The demo student bundle trained 1 epoch and evaluated at its own size (128²) on a few real slices:
    ``data`` (dataset folder) and ``run`` (its bundle_root, with models/model.pt and eval/metrics.json)."""
    from common.data import prepare_demo

    work = tmp_path_factory.mktemp("demo_student_128")
    data, run = str(work / "data"), str(work / "run")
    prepare_demo(data, image_size=128, stride=9, block=2, gap=0)
    configs = os.path.join(ROOT, "bundles", "demo_student", "configs")
    common = ["--bundle_root", run, "--dataset_dir", data, "--batch_size", "4"]
    run_ok([sys.executable, "-m", "monai.bundle", "run", "--config_file", os.path.join(configs, "train.json"),
            "--epochs", "1", *common], cwd=str(work))
    run_ok([sys.executable, "-m", "monai.bundle", "run", "--config_file",
            str([os.path.join(configs, "train.json"), os.path.join(configs, "evaluate.json")]), *common], cwd=str(work))
    return {"data": data, "run": run}


@contextlib.contextmanager
def monailabel_server(app: str, studies: str, conf: list[str], work):
    """A real ``monailabel start_server`` of ``app`` on 127.0.0.1 (a free port; ``conf``: name value pairs),
    answering ``/info/``; yields its url, stops it after. Its log: ``work/server.log``."""
    import socket
    import time

    import requests

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf_args = [arg for name, value in zip(conf[::2], conf[1::2]) for arg in ("--conf", name, value)]
    log = open(os.path.join(work, "server.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "monailabel.main", "start_server", "--app", app, "--studies",
                             studies, *conf_args, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=work, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                break
            try:
                if requests.get(f"{url}/info/", timeout=5).ok:
                    break
            except requests.ConnectionError:
                time.sleep(1)
        else:
            pytest.fail("the MONAI Label server did not answer /info/ within 4 minutes:\n"
                        + open(os.path.join(work, "server.log")).read()[-3000:])
        if proc.poll() is not None:
            pytest.fail("the MONAI Label server exited:\n" + open(os.path.join(work, "server.log")).read()[-5000:])
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
