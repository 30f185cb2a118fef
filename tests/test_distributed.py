"""Multi-process training: every stage's multi_gpu_train.json loads, and torchrun with 2 CPU processes
(gloo) trains the student and the TS-KD pretrain with replicas that end identical."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

BUNDLES = sorted(d for d in os.listdir(os.path.join(ROOT, "bundles")) if not d.startswith("_")
                 and os.path.isdir(os.path.join(ROOT, "bundles", d)))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_multi_gpu_override_touches_only_what_the_stage_has(bundle):
    from monai.bundle import ConfigParser
    from monai.bundle.reference_resolver import ReferenceResolver

    configs = [os.path.join(ROOT, "bundles", bundle, "configs", c) for c in ("train.json", "multi_gpu_train.json")]
    parser = ConfigParser()
    parser.read_config(configs)  # a key patched under a section the stage lacks raises here
    parser.parse(reset=True)
    items = parser.ref_resolver.items
    missing = {ref for id_, item in items.items()
               for ref in ReferenceResolver.find_refs_in_config(item.get_config(), id_) if ref not in items}
    assert not missing, f"{bundle}: multi_gpu_train.json refers to {sorted(missing)}"
    assert parser["initialize"][0] == "$common.engines.init_distributed()"
    assert parser["finalize"][-1] == "$common.engines.finish_distributed()"
    assert "cuda" not in json.dumps(parser.get()), "the device must follow what the machine has"


def _torchrun(bundle, root, *args):
    configs = str([os.path.join(ROOT, "bundles", bundle, "configs", c) for c in ("train.json", "multi_gpu_train.json")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "monai.bundle",
           "run", "--config_file", configs, "--bundle_root", str(root), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    log = result.stdout + result.stderr
    ranks = root / "models" / "ranks.json"
    if result.returncode != 0:
        # A gloo teardown can abort a worker after training finished and ranks.json was written. Accept that
        # only when no worker raised a Python error and the run's outputs are complete.
        worker_error = re.search(r"\[rank\d\]:.*(Traceback|Error|error:)", log)
        assert not worker_error and ranks.is_file() and (root / "models" / "model.pt").is_file(), log[-6000:]
    report = json.load(open(ranks))
    return report, log


def test_torchrun_trains_the_student_and_tskd_pretrain_with_identical_replicas(demo_small, tmp_path):
    from common.data import make_transfer_set
    from common.engines import module_digest
    from common.models import TrainableState, build_teacher, build_vit_fpn

    common = ["--dataset_dir", demo_small, "--image_size", "64", "--batch_size", "2", "--epochs", "2"]
    student, log = _torchrun("demo_student", tmp_path / "student", *common)
    assert student["world_size"] == 2 and student["identical"] and len(set(student["digests"])) == 1
    assert "rank 1 of 2 (gloo)" in log and "val_mean_dice" in log

    make_transfer_set(os.path.join(demo_small, "datalist.json"), str(tmp_path / "transfer"), size=6, seed=0)
    torch.save(TrainableState(build_teacher("litemedsam", image_size=64, num_classes=3)).state_dict(),
               tmp_path / "teacher.pt")
    pretrain, log = _torchrun("demo_pretrain", tmp_path / "pretrain", *common,
                              "--transfer_file", str(tmp_path / "transfer" / "datalist.json"),
                              "--teacher_checkpoint", str(tmp_path / "teacher.pt"))
    assert pretrain["identical"] and len(set(pretrain["digests"])) == 1
    assert log.count("teacher cache written") == 1  # rank 0 built it; rank 1 waited and read it
    # The saved student is the replicas' common final state.
    model = build_vit_fpn(image_size=64, num_classes=3, fpn="skip")  # the bundles' default pyramid
    model.load_state_dict(torch.load(tmp_path / "pretrain" / "models" / "model.pt", weights_only=True))
    assert module_digest(model) == pretrain["digests"][0]


def _diverge(rank: int, world: int, port: int, out: str, queue) -> None:
    import torch.distributed as dist

    from common.engines import check_ranks_agree
    from common.errors import TskdError

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.fill_(0.0)
        model.bias.fill_(float(rank))  # one tensor differs between the replicas
    try:
        check_ranks_agree(model, out)
        queue.put((rank, "agreed"))
    except TskdError as e:
        queue.put((rank, e.message))
    dist.destroy_process_group()


def test_replicas_that_drifted_apart_are_an_error_naming_the_tensor(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_diverge, args=(r, 2, port, str(tmp_path), queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    messages = dict(queue.get(timeout=10) for _ in procs)
    assert all("different weights in 1 tensors (first: bias)" in m for m in messages.values()), messages
    assert json.load(open(tmp_path / "ranks.json"))["identical"] is False
