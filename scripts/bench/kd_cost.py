"""What a distillation epoch costs, against the student's own supervised epoch, measured in one run.

    python scripts/bench/kd_cost.py --data_dir data/demo --transfer 160 --image_size 128

On one transfer set and one student, times (median over epochs after a warm-up epoch):
  - a TS-KD epoch reading the teacher-output cache,
  - a TS-KD epoch running the teacher online,
  - a supervised-only student epoch (0.2 CE + 0.8 Dice) over as many labelled images,
  - an MAE epoch and a MoCo v3 epoch (the self-supervised baselines; the pretrain bundle's mae.json /
    mocov3.json components, MoCo with its two augmented views) on the same transfer images,
each in its own process (threads pinned), and prints the ratios and each mode's peak memory, plus the
one-time cost of building the cache. Target: cached TS-KD epoch <= 1.3x the student-only epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch


def _transforms(size: int, keys: list[str]):
    from monai.transforms import (Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, Resized,
                                  ScaleIntensityRangePercentilesd)

    modes = ["area" if k == "image" else "nearest" for k in keys]
    return Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys),
                    ScaleIntensityRangePercentilesd("image", 0.5, 99.5, 0.0, 1.0, clip=True),
                    Resized(keys, (size, size), mode=modes), EnsureTyped(keys, dtype=torch.float32)])


def _teacher(args):
    from common.models import build_teacher

    return build_teacher("litemedsam", trained=args.teacher_checkpoint or None, image_size=args.image_size,
                         num_classes=args.num_classes, lora_rank=args.lora_rank)


def _peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss across exec, so a
    child would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_mode(args) -> dict:
    """One mode in this process: ``epochs`` epochs through the real engine; seconds per epoch, peak RSS."""
    from monai.data import DataLoader, Dataset
    from monai.engines import SupervisedTrainer
    from monai.losses import DiceCELoss

    from common.data import load_datalist
    from common.engines import DistillationTrainer, TeacherCache, kd_dataset
    from common.losses import TaskSpecificKDLoss
    from common.models import DistillationStudent, MaskedAutoencoder, MoCoV3, build_vit_fpn

    torch.manual_seed(0)
    student = build_vit_fpn(args.image_size, 1, args.num_classes)
    times: list[float] = []
    if args.mode == "student":
        labelled = load_datalist(os.path.join(args.data_dir, "datalist.json"), "training")
        data = [labelled[i % len(labelled)] for i in range(args.transfer)]  # as many images as the transfer set
        loader = DataLoader(Dataset(data, _transforms(args.image_size, ["image", "label"])), batch_size=args.batch_size,
                            shuffle=True, num_workers=0)
        trainer = SupervisedTrainer(device=torch.device(args.device), max_epochs=args.epochs, train_data_loader=loader,
                                    network=student, optimizer=torch.optim.AdamW(student.parameters(), 1e-4),
                                    loss_function=DiceCELoss(to_onehot_y=True, softmax=True, lambda_ce=0.2, lambda_dice=0.8))
    elif args.mode in ("mae", "mocov3"):
        from monai.transforms import Compose, CopyItemsd

        from common.data import random_affine
        from common.engines import SelfSupervisedTrainer

        data = load_datalist(os.path.join(args.work, "transfer", "datalist.json"), "training")
        views = ["image"] if args.mode == "mae" else ["image", "image_2"]
        extra = [] if args.mode == "mae" else [CopyItemsd("image", names="image_2")] + \
            [random_affine(k, args.image_size, prob=1.0, rotate=0.26, scale=0.1) for k in views]
        transform = Compose([_transforms(args.image_size, ["image"]), *extra])
        network = MaskedAutoencoder(student.encoder) if args.mode == "mae" else MoCoV3(student.encoder)
        loader = DataLoader(Dataset(data, transform), batch_size=args.batch_size, shuffle=True, num_workers=0,
                            drop_last=True)
        trainer = SelfSupervisedTrainer(device=torch.device(args.device), max_epochs=args.epochs,
                                        train_data_loader=loader, network=network, views=views,
                                        optimizer=torch.optim.AdamW(network.parameters(), 1.5e-4))
    else:
        data = load_datalist(os.path.join(args.work, "transfer", "datalist.json"), "training")
        transform = _transforms(args.image_size, ["image"])
        teacher = _teacher(args)
        cache = TeacherCache(os.path.join(args.work, "cache"), teacher, data, transform, args.image_size,
                             on_stale="error") if args.mode == "cached" else None
        network = DistillationStudent(student)
        loader = DataLoader(kd_dataset(data, transform, cache), batch_size=args.batch_size, shuffle=True, num_workers=0)
        trainer = DistillationTrainer(device=torch.device(args.device), max_epochs=args.epochs, train_data_loader=loader,
                                      network=network, optimizer=torch.optim.Adam(network.parameters(), 1.5e-4),
                                      loss_function=TaskSpecificKDLoss(), teacher=teacher.to(args.device))
    from ignite.engine import Events

    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: times.append(-time.perf_counter()))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: times.__setitem__(-1, times[-1] + time.perf_counter()))
    trainer.run()
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else _peak_rss_mb()
    return {"mode": args.mode, "epoch_seconds": statistics.median(times[1:] or times), "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data/demo", help="folder with datalist.json (prepare_data.py demo)")
    parser.add_argument("--teacher_checkpoint", default="", help="trained teacher (models/model.pt); default: untrained decoder")
    parser.add_argument("--transfer", type=int, default=160, help="transfer-set size")
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--num_classes", type=int, default=3)
    parser.add_argument("--lora_rank", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=3, help="per mode; the first is a warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mode", choices=["cached", "online", "student", "mae", "mocov3"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args)), flush=True)
        return

    from common.data import load_datalist, make_transfer_set
    from common.engines import TeacherCache

    with tempfile.TemporaryDirectory(prefix="kd_cost_") as work:
        make_transfer_set(os.path.join(args.data_dir, "datalist.json"), os.path.join(work, "transfer"), size=args.transfer)
        data = load_datalist(os.path.join(work, "transfer", "datalist.json"), "training")
        start = time.perf_counter()
        TeacherCache(os.path.join(work, "cache"), _teacher(args).to(args.device), data,
                     _transforms(args.image_size, ["image"]), args.image_size, device=args.device)
        build = time.perf_counter() - start
        results = {}
        for mode in ("student", "cached", "online", "mae", "mocov3"):
            cmd = [sys.executable, __file__, "--mode", mode, "--work", work] + \
                  [f"--{k}={v}" for k, v in vars(args).items() if k not in ("mode", "work") and v is not None]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                sys.exit(f"{mode} run failed:\n{out.stderr[-3000:]}")
            results[mode] = json.loads(line[-1][len("RESULT "):])
    s, c, o = (results[m]["epoch_seconds"] for m in ("student", "cached", "online"))
    print(f"\nKD cost, {args.transfer} images of {args.image_size}², batch {args.batch_size}, {args.device}, "
          f"{args.threads} threads")
    print(f"{'mode':<28}{'s/epoch':>10}{'peak MB':>10}")
    for name, mode in (("student only (supervised)", "student"), ("TS-KD, cached teacher", "cached"),
                       ("TS-KD, online teacher", "online"), ("MAE", "mae"), ("MoCo v3 (two views)", "mocov3")):
        print(f"{name:<28}{results[mode]['epoch_seconds']:>10.2f}{results[mode]['peak_mb']:>10.0f}")
    print(f"\ncached TS-KD / student epoch: {c / s:.2f}x (target <= 1.3x)")
    print(f"online TS-KD / student epoch: {o / s:.2f}x")
    print(f"online / cached:              {o / c:.2f}x")
    m, v = results["mae"]["epoch_seconds"], results["mocov3"]["epoch_seconds"]
    print(f"cached TS-KD / MAE epoch:     {c / m:.2f}x")
    print(f"cached TS-KD / MoCo v3 epoch: {c / v:.2f}x")
    print(f"cache build (once):           {build:.1f} s = {build / c:.1f} cached epochs")


if __name__ == "__main__":
    main()
