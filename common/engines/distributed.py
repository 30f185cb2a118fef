"""Multi-process training under ``torchrun`` (PyTorch DDP), for the bundles' ``multi_gpu_train.json``.

One process per GPU, NCCL between GPUs; without GPUs the same configs run one process per CPU worker
over gloo (how the tests check them). Only rank 0 writes checkpoints, logs and exports; every rank
resumes from the same checkpoint; at the end the ranks compare their weights, so a run whose replicas
drifted apart says so instead of saving one rank's weights as if they were the model.

    torchrun --standalone --nproc_per_node=2 -m monai.bundle run \\
        --config_file "['configs/train.json','configs/multi_gpu_train.json']"
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os

import torch
import torch.distributed as dist
import torch.nn as nn

from common.errors import TskdError
from common.provenance import module_digest, tensor_bytes

__all__ = ["init_distributed", "local_device", "wrap_ddp", "is_rank0", "barrier", "check_ranks_agree",
           "finish_distributed"]

logger = logging.getLogger(__name__)


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_rank0() -> bool:
    """True in a single-process run and on rank 0 of a distributed one."""
    return not _active() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if _active() and dist.get_world_size() > 1:
        dist.barrier()


def local_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` (made current) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def init_distributed(timeout_minutes: float = 120) -> None:
    """Join the process group ``torchrun`` set up: NCCL on GPUs, gloo on CPUs.

    The timeout bounds how long ranks wait for each other, e.g. while rank 0 alone builds the teacher
    cache (``common.engines.TeacherCache``); raise it for very large transfer sets.
    """
    if _active():
        return
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise TskdError("multi_gpu_train.json runs under torchrun, which sets RANK and WORLD_SIZE: "
                        "torchrun --standalone --nproc_per_node=<GPUs> -m monai.bundle run --config_file "
                        "\"['configs/train.json','configs/multi_gpu_train.json']\". For one process use train.json alone.")
    import ignite.distributed as idist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    # Ignite sets up its own view of the group lazily, with a collective, the first time a handler asks for
    # the rank; a handler built on rank 0 only (a checkpoint saver) would then wait for the others forever.
    idist.sync()
    logger.info(f"rank {dist.get_rank()} of {dist.get_world_size()} ({backend})")


def wrap_ddp(module: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` on ``device`` in ``DistributedDataParallel`` (its weights are broadcast from rank 0).

    Args:
        find_unused_parameters: needed when part of the model gets no gradient in a step, e.g. the FPN
            head in task-agnostic KD (``w_logit`` 0) or the hidden-state projection in TS-KD6 (``w_hidden`` 0).
    """
    from common.settings import as_flag

    module = module.to(device)
    if not _active():
        return module
    ids = [device] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        module, device_ids=ids, find_unused_parameters=as_flag(find_unused_parameters, "ddp_find_unused_parameters"))


def check_ranks_agree(model: nn.Module, out_dir: str) -> list[str]:
    """Compare the trained weights across ranks; rank 0 writes ``ranks.json`` (world size and one digest per
    rank). Replicas that differ are an error on every rank: their average is not a trained model.

    Returns:
        The digests, one per rank.
    """
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    digest = module_digest(model)
    digests = [digest]
    if _active():
        digests = [None] * dist.get_world_size()
        dist.all_gather_object(digests, digest)
    if is_rank0():
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "ranks.json"), "w") as f:
            json.dump({"world_size": len(digests), "digests": digests, "identical": len(set(digests)) == 1}, f, indent=1)
    if len(set(digests)) != 1:
        # Name the tensors that differ (a second, per-tensor exchange, only on failure).
        mine = {k: hashlib.sha256(tensor_bytes(v)).hexdigest() for k, v in model.state_dict().items()}
        every = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        differ = sorted(k for k in mine if len({r.get(k) for r in every}) > 1)
        raise TskdError(f"the {len(digests)} ranks ended with different weights in {len(differ)} tensors (first: "
                        f"{', '.join(differ[:3])}); the replicas drifted (a rank that skipped a step, or a layer outside "
                        f"DDP). Nothing was averaged; see {os.path.join(out_dir, 'ranks.json')}.")
    return digests


def finish_distributed() -> None:
    """Leave the process group (after every rank reached this point)."""
    if _active():
        barrier()
        dist.destroy_process_group()
