"""The main job: every stage of tskd for one dataset, each through its MONAI bundle.

    python scripts/run_pipeline.py --dataset demo --profile quick --out runs/demo

Stages: prepare the data (demo only) -> teacher (SAM-LoRA) -> transfer set (``--transfer_source``, by default
the profile's: ``synth``, a DDPM trained on seeded affine views of the labelled images, then sampled with
DDIM; ``augment``, seeded affine views of the labelled images; ``unlabelled``, real images without masks)
-> pre-train the student by distillation (``--method tskd`` or ``takd``), by MAE or MoCo v3 on the transfer
set (``mae``, ``mocov3``), or not at all (``scratch``) -> fine-tune the student on the labels -> evaluate
teacher and student on the test split. The summary states which transfer set was used and, for a synthetic
one, its quality (loudly when it does not look like the dataset).
A stage whose outputs exist for the same inputs (including its upstream stages) is skipped, so an
interrupted run continues where it stopped (each bundle also resumes its own training). Writes
``OUT/metrics.json`` ({"teacher": M, "student": M}), ``OUT/summary.md`` and ``OUT/predictions.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time

from common.data import (check_unlabelled_folder, load_datalist, make_transfer_set, prepare_demo, read_datalist_info,
                         validation_items)
from common.data.figures import save_prediction_grid
from common.data.io import file_sha256
from common.engines import read_training_record
from common.engines.metrics import format_report
from common.errors import TskdError, install_excepthook
from common.models import FPN_PRESETS, checkpoint_num_heads, load_state_file
from common.settings import LITEMEDSAM_MULTIPLE, check_image_size, check_labels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Training budgets per stage and the transfer-set size; README.md gives what each profile costs and why its
# settings are what they are. Budgets are in optimizer steps (``steps``, in epochs of ``epoch_length`` steps
# with a validation after each, ``patience`` validations without a better one stop early), so a set of 11
# images and one of 300 both train to convergence; ``epochs`` counts passes over the data instead. A stage's
# other keys (learning_rate, lr_schedule, ...) are bundle overrides.
# Pre-training is budgeted in transfer images seen (``images``), as the paper gives every method the same
# epochs: each method then takes the steps its own batch needs. ``pretrain_batch`` scales a method's recipe
# batch (``PRETRAIN_BATCH``) down where the machine needs it.
# The synthetic transfer set comes from a DDPM trained on ``augmented`` views of the labelled images (with
# ``synth_augmentation``'s mild ranges where given); ``synth`` holds the synth bundle's overrides and
# ``sample_steps`` the DDIM steps. ``transfer_source``: the profile's default source of the transfer set.
MILD_AUGMENTATION = {"rotate": 0.05, "scale": 0.05, "shear": 0.0, "translate": 0.02}
PROFILES = {
    "quick": {"teacher": {"steps": 150, "patience": 3}, "pretrain": {"images": 4000},
              "student": {"steps": 300, "patience": 3}, "epoch_length": 25, "transfer": 160,
              "pretrain_batch": {"tskd": 16, "takd": 16}, "transfer_source": "augment", "augmented": 160,
              "synth": {"steps": 1500, "epoch_length": 100, "image_size": 32, "denoiser_width": 16, "learning_rate": 1e-3,
                        "prediction_type": "v_prediction", "ema_decay": 0.995},
              "synth_augmentation": MILD_AUGMENTATION, "sample_steps": 20},
    # The paper's recipe (section 3 and its tables); the teacher's lr, warm-up and decay are SAMed's.
    "paper": {"teacher": {"epochs": 160, "learning_rate": 0.005, "lr_schedule": "poly"}, "pretrain": {"epochs": 1600},
              "student": {"epochs": 160}, "transfer": 3000, "pretrain_batch": {}, "transfer_source": "synth",
              "augmented": 1000, "synth": {"epochs": 300, "denoiser_width": 32, "ema_decay": 0.999}, "sample_steps": 50},
    "smoke": {"teacher": {"steps": 2}, "pretrain": {"images": 8}, "student": {"steps": 2},  # wiring check (tests)
              "epoch_length": 1, "transfer": 8, "pretrain_batch": {m: 4 for m in ("tskd", "takd", "mae", "mocov3")},
              "transfer_source": "synth", "augmented": 8,
              "synth": {"epochs": 1, "image_size": 32, "denoiser_width": 16, "ema_decay": 0.9}, "sample_steps": 2},
}
# Each pre-training method's own batch: the paper's for the distillations, MAE's and MoCo v3's published ones.
PRETRAIN_BATCH = {"tskd": 48, "takd": 48, "mae": 64, "mocov3": 32}
# A synthetic transfer set whose mean PSNR against the nearest real image is below this is reported loudly:
# its images do not look like the dataset (the paper's sets: ~28 dB).
LOW_SYNTH_PSNR = 20.0
# A teacher whose best validation Dice is below this is reported loudly before anything distils from it.
WEAK_TEACHER_DICE = 0.5
METHODS = ("tskd", "takd", "mae", "mocov3", "imagenet_mae", "scratch")
# Methods whose pre-training trains the student's FPN head (TS-KD's logit term); the others' head is untrained.
HEAD_PRETRAINED = ("tskd",)
# Pre-training methods that are a short override of the pretrain bundle's train.json (configs/<method>.json).
SELF_SUPERVISED = ("mae", "mocov3")
MAE_LITE_HINT = ("ImageNet-MAE initialisation needs MAE-lite's ViT-Tiny weights (Wang et al., ICML 2023), published "
                 "with https://github.com/wangsr126/mae-lite; this project cannot download them. Pass the file with "
                 "--imagenet_mae_checkpoint.")


def _bundle(dataset: str, stage: str) -> str:
    return os.path.join(ROOT, "bundles", f"{dataset}_{stage}", "configs")


def _stamp(args: dict) -> str:
    return hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:16]


def _read_json(path: str) -> dict:
    """A small JSON record of ours, or {} when it is absent or unreadable (e.g. cut short by a crash)."""
    try:
        with open(path) as f:
            value = json.load(f)
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _weights_digest(root: str) -> str:
    path = os.path.join(root, "models", "model.pt")
    return file_sha256(path) if os.path.isfile(path) else ""


def train_bundle(dataset: str, stage: str, root: str, overrides: dict, upstream: str = "",
                 config: str = "") -> str:
    """Train one bundle into ``root`` unless it was trained with the same overrides and upstream stages and
    its weights are still the ones that training wrote.

    ``done.json`` is removed before a stage starts writing and records the sha256 of ``models/model.pt``, so
    weights overwritten by another (interrupted) run are never mistaken for this run's.

    ``config`` names a short override of the stage's train.json (``mae`` -> ``configs/mae.json``).

    Returns:
        The stage's stamp (a hash of its overrides, ``upstream`` and the weights), for the stages after it.
    """
    stamp_file, pending_file = os.path.join(root, "done.json"), os.path.join(root, "pending.json")
    stamp = _stamp({"overrides": overrides, "upstream": upstream, **({"config": config} if config else {})})
    done = _read_json(stamp_file)
    if done.get("stamp") == stamp:
        if done.get("weights_sha256") and done["weights_sha256"] == _weights_digest(root):
            print(f"\n=== {stage}: already trained with these settings ({root}), skipping", flush=True)
            return _stamp({"stage": stamp, "weights": done["weights_sha256"]})
        print(f"\n=== {stage}: the weights in {root}/models changed since this stage finished; training again",
              flush=True)
    # Resume only an interrupted run of these same settings; anything else in the folder is stale.
    resume = _read_json(pending_file).get("stamp") == stamp
    print(f"\n=== {stage}: training ({describe_budget(overrides)}{', resuming' if resume else ''}) -> {root}",
          flush=True)
    os.makedirs(root, exist_ok=True)
    if os.path.isfile(stamp_file):
        os.remove(stamp_file)  # from here on the folder's weights are this run's, unfinished
    with open(pending_file, "w") as f:
        json.dump({"stamp": stamp}, f)
    start = time.time()
    configs = [os.path.join(_bundle(dataset, stage), f"{name}.json") for name in ("train", config) if name]
    _call(["--config_file", configs[0] if len(configs) == 1 else str(configs),
           "--meta_file", os.path.join(_bundle(dataset, stage), "metadata.json"), *_args(overrides, root),
           f"--resume={resume}"])
    weights = _weights_digest(root)
    with open(stamp_file, "w") as f:
        json.dump({"stamp": stamp, "overrides": overrides, "weights_sha256": weights,
                   "seconds": round(time.time() - start)}, f)
    os.remove(pending_file)
    return _stamp({"stage": stamp, "weights": weights})


def stage_budget(profile: dict, stage: str) -> dict:
    """A stage's overrides from the profile: its budget (``steps`` with ``epoch_length`` and ``patience``, or
    ``epochs``) and any other setting the profile gives it."""
    budget = dict(profile[stage])
    if budget.get("steps"):
        budget.update(epoch_length=profile["epoch_length"], patience=budget.get("patience", 0))
    return budget


def pretrain_recipe(profile: dict, method: str) -> dict:
    """The pre-training stage's batch and budget for ``method``: its recipe's batch (``PRETRAIN_BATCH``, or the
    profile's scaled one) and, for a budget in transfer images seen, the steps that batch needs."""
    batch = profile["pretrain_batch"].get(method, PRETRAIN_BATCH[method])
    budget = {k: v for k, v in profile["pretrain"].items() if k != "images"}
    if "images" in profile["pretrain"]:
        budget.update(steps=math.ceil(profile["pretrain"]["images"] / batch), epoch_length=profile["epoch_length"],
                      patience=0)
    return {"batch_size": batch, **budget}


def describe_budget(overrides: dict) -> str:
    if overrides.get("steps"):
        patience = overrides.get("patience")
        return (f"at most {overrides['steps']} steps" +
                (f", early stop after {patience} validations without a better one" if patience else ""))
    return f"{overrides.get('epochs')} epochs"


def evaluate_bundle(dataset: str, stage: str, root: str, overrides: dict) -> dict:
    """Evaluate a trained bundle on the test split; returns its metrics report."""
    print(f"=== {stage}: evaluating on the test split", flush=True)
    configs = _bundle(dataset, stage)
    _call(["--config_file", str([os.path.join(configs, "train.json"), os.path.join(configs, "evaluate.json")]),
           "--meta_file", os.path.join(configs, "metadata.json"), *_args(overrides, root)])
    with open(os.path.join(root, "eval", "metrics.json")) as f:
        return json.load(f)


def infer_bundle(dataset: str, stage: str, root: str, overrides: dict) -> str:
    """Run a bundle's inference.json on the test split; returns the predictions folder."""
    _call(["--config_file", os.path.join(_bundle(dataset, stage), "inference.json"), *_args(overrides, root)])
    return os.path.join(root, "eval", "predictions")


def _args(overrides: dict, root: str) -> list[str]:
    return [f"--{k}={v}" for k, v in overrides.items()] + ["--bundle_root", root]


def _call(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"stage failed (exit {result.returncode}): python -m monai.bundle run {' '.join(args)}")


def augmented_set(data_dir: str, out: str, size: int, labels: int, seed: int, augmentation: dict | None = None) -> str:
    """The labelled training images plus seeded affine views, ``size`` in all (made once). ``augmentation``:
    the affine ranges (default: ``TRANSFER_AUGMENTATION``, the transfer set's)."""
    name = f"augmented_{size}_labels{labels}_seed{seed}" + (f"_{_stamp(augmentation)}" if augmentation else "")
    folder = os.path.join(out, name)
    if not os.path.isfile(os.path.join(folder, "datalist.json")):
        print(f"\n=== augmented set: {size} images from the labelled training images -> {folder}", flush=True)
        make_transfer_set(os.path.join(data_dir, "datalist.json"), folder, size=size, labels=labels, seed=seed,
                          augmentation=augmentation)
    return folder


def unlabelled_set(data_dir: str, out: str, size: int, labels: int, seed: int, unlabelled_dir: str) -> str:
    """Real images nobody labelled (a folder, or the training images beyond the budget) and seeded affine
    views of them, ``size`` in all (made once per source)."""
    where = _stamp({"dir": os.path.abspath(unlabelled_dir)}) if unlabelled_dir else "beyond_budget"
    folder = os.path.join(out, f"unlabelled_{size}_labels{labels}_seed{seed}_{where}")
    if not os.path.isfile(os.path.join(folder, "datalist.json")):
        print(f"\n=== unlabelled transfer set: {size} images -> {folder}", flush=True)
        make_transfer_set(os.path.join(data_dir, "datalist.json"), folder, size=size, labels=labels, seed=seed,
                          source="unlabelled", unlabelled_dir=unlabelled_dir or None)
    return folder


def synthetic_set(args, data_dir: str, out: str, size: int, profile: dict) -> tuple[str, str]:
    """Train the DDPM on the augmented set (synth bundle), then sample ``size`` images with DDIM."""
    augmented = augmented_set(data_dir, out, profile["augmented"], args.labels, args.seed,
                              profile.get("synth_augmentation"))
    synth_root = os.path.join(out, "synth")
    synth = {"dataset_dir": data_dir, "seed": args.seed, "augmented_file": os.path.join(augmented, "datalist.json"),
             "denoiser": args.denoiser, **profile["synth"]}
    stamp = train_bundle(args.dataset, "synth", synth_root, synth)
    folder = os.path.join(synth_root, f"synthetic_{size}_seed{args.seed}_{stamp}")
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        print(f"\n=== synthetic transfer set: sampling {size} images (DDIM {profile['sample_steps']} steps) -> {folder}",
              flush=True)
        configs = _bundle(args.dataset, "synth")
        _call(["--config_file", str([os.path.join(configs, "train.json"), os.path.join(configs, "sample.json")]),
               "--meta_file", os.path.join(configs, "metadata.json"), *_args(synth, synth_root),
               f"--n_samples={size}", f"--sample_steps={profile['sample_steps']}", f"--sample_seed={args.seed}",
               f"--synth_dir={folder}"])
    print("\n".join(transfer_report("synth", folder)), flush=True)
    return folder, stamp


def transfer_report(source: str, folder: str) -> list[str]:
    """Summary lines on the transfer set in ``folder``: its source, size and, for a synthetic set, its quality
    (loud when the mean PSNR is below ``LOW_SYNTH_PSNR``)."""
    info = _read_json(os.path.join(folder, "datalist.json"))
    count = len(info.get("training", []))
    shown = os.path.relpath(folder) if os.path.abspath(folder).startswith(os.getcwd() + os.sep) else folder
    if source == "augment":
        return [f"Transfer set: {count} images, the labelled training images and their affine views "
                f"(--transfer_source augment), {shown}."]
    if source == "unlabelled":
        return [f"Transfer set: {count} images, real unlabelled images and their affine views "
                f"(--transfer_source unlabelled), {shown}."]
    quality = _read_json(os.path.join(folder, "quality.json"))
    manifest = info.get("manifest", {})
    lines = [f"Transfer set: {count} synthetic images (--transfer_source synth; DDIM {manifest.get('steps')} steps), "
             f"{shown}."]
    if "mean_psnr" not in quality:
        return lines + [f"**WARNING: {shown}/quality.json is missing: the synthetic set's quality is unknown.**"]
    lines.append(f"Synthetic set quality: mean PSNR {quality['mean_psnr']:.2f} dB, mean MSE {quality['mean_mse']:.1f} "
                 f"(0-255) against the nearest real training image; near-copies (PSNR > "
                 f"{quality.get('memorization_psnr', 40):g} dB): {len(quality.get('near_copies', []))}; samples.png "
                 "shows them.")
    if quality["mean_psnr"] < LOW_SYNTH_PSNR:
        lines.append(f"**WARNING: the synthetic transfer set is of low quality (mean PSNR {quality['mean_psnr']:.2f} dB "
                     f"< {LOW_SYNTH_PSNR:g} dB; the paper's sets: ~28 dB): its images do not look like the dataset, "
                     "and the student is distilled on them.** Train the generator longer (--profile paper, on a GPU) "
                     "or use --transfer_source augment or unlabelled.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo", help="bundle prefix: bundles/<dataset>_{teacher,student}")
    parser.add_argument("--data_dir", default=None, help="folder with datalist.json (default: prepare the demo in OUT/data)")
    parser.add_argument("--method", choices=METHODS, default="tskd", help="student pre-training")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--transfer", type=int, default=0, help="transfer-set size (default: the profile's)")
    parser.add_argument("--transfer_source", choices=["synth", "augment", "unlabelled"], default=None,
                        help="(default: the profile's) synth: DDPM samples (the paper); augment: affine views of the "
                             "labelled images; "
                             "unlabelled: real images without masks (--unlabelled_dir, or the training images "
                             "beyond --labels) and their affine views")
    parser.add_argument("--unlabelled_dir", default="", help="folder of unlabelled images, for --transfer_source unlabelled")
    parser.add_argument("--denoiser", choices=["unet", "swin"], default="unet", help="the DDPM's denoiser")
    parser.add_argument("--labels", type=int, default=0, help="labelled training images to use (0: all)")
    parser.add_argument("--val_labels", type=int, default=None,
                        help="validation images (masks) that pick checkpoints and stop training early (default: the "
                             "dataset's whole validation split; 0: none, every stage keeps its last weights)")
    parser.add_argument("--teacher", default="litemedsam", help="litemedsam (embedded) or vit_b / vit_l / vit_h")
    parser.add_argument("--sam_checkpoint", default="", help="official SAM checkpoint, for --teacher vit_*")
    parser.add_argument("--teacher_checkpoint", default="",
                        help="an already trained teacher (a teacher bundle's models/model.pt): skips teacher training")
    parser.add_argument("--fpn", choices=sorted(FPN_PRESETS), default="light",
                        help="the student's pyramid: light (default, cheaper than its encoder), the paper's, or skip (light + a convolutional stem joined at full resolution)")
    parser.add_argument("--imagenet_mae_checkpoint", default="",
                        help="MAE-lite's ImageNet ViT-Tiny weights, for --method imagenet_mae")
    parser.add_argument("--imagenet_mae_pos_embed", action="store_true",
                        help="resample MAE-lite's position embeddings to the student's grid (default: not loaded when "
                             "the grid differs, as the paper)")
    parser.add_argument("--num_heads", type=int, default=0,
                        help="attention heads of the student's ViT-Tiny (default: 3; imagenet_mae: as the checkpoint records)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--image_size", type=int, default=0, help="input size for every stage (default: the bundle's)")
    parser.add_argument("--out", default="runs/demo")
    args = parser.parse_args()
    install_excepthook()
    try:
        run(args)
    except TskdError as e:
        sys.exit(f"run_pipeline: {e.message}")


def imagenet_mae_heads(checkpoint: str, num_heads: int) -> int:
    """The head count of the ImageNet-MAE student: as given, else as the checkpoint records; one clear error
    when the checkpoint is missing or records nothing and none was given."""
    load_state_file(checkpoint, "ImageNet-MAE ViT-Tiny checkpoint (--imagenet_mae_checkpoint)", MAE_LITE_HINT)
    recorded = checkpoint_num_heads(checkpoint)
    if num_heads and recorded and num_heads != recorded:
        raise TskdError(f"'{checkpoint}' records {recorded} attention heads, but --num_heads is {num_heads}.")
    if not (num_heads or recorded):
        raise TskdError(f"'{checkpoint}' does not record how many attention heads its ViT-Tiny uses: give --num_heads "
                        "(MAE-lite's ViT-Tiny uses 12; weights of 3 and 12 heads have the same shapes but compute "
                        "different functions).")
    return num_heads or recorded


def check_args(args) -> None:
    """Everything the run needs that can be checked before the first stage starts (one message each)."""
    check_labels(args.labels, "--labels")
    if args.val_labels is not None:
        check_labels(args.val_labels, "--val_labels")
    if args.transfer_source is None:
        args.transfer_source = PROFILES[args.profile]["transfer_source"]
    if args.image_size:
        check_image_size(args.image_size, "--image_size")
        if args.teacher == "litemedsam":  # every run builds the teacher (trained, or to evaluate it)
            check_image_size(args.image_size, "--image_size", *LITEMEDSAM_MULTIPLE)
    if args.transfer_source == "unlabelled":
        if args.unlabelled_dir and not os.path.isdir(args.unlabelled_dir):
            raise TskdError(f"--unlabelled_dir '{args.unlabelled_dir}' is not a folder.")
        if not args.unlabelled_dir and not args.labels:
            raise TskdError("--transfer_source unlabelled needs images without labels: give --unlabelled_dir, or a "
                            "label budget (--labels N) below the training split, whose other images are then used.")
    if args.transfer < 0:
        raise TskdError(f"--transfer must be 0 (the profile's size) or a positive number of images, got {args.transfer}.")
    if args.teacher_checkpoint:
        load_state_file(args.teacher_checkpoint, "trained teacher checkpoint (--teacher_checkpoint)",
                        "Pass a teacher bundle's models/model.pt, or leave it out to train the teacher.")
    if args.method == "imagenet_mae":
        args.num_heads = imagenet_mae_heads(args.imagenet_mae_checkpoint, args.num_heads)
    elif args.num_heads not in (0, 3) and args.method != "scratch":
        raise TskdError(f"--num_heads {args.num_heads} needs --method imagenet_mae or scratch: the pre-training stages "
                        "build timm's 3-head ViT-Tiny, whose weights would load into another head count without "
                        "error and compute a different function.")
    if args.sam_checkpoint:
        load_state_file(args.sam_checkpoint, f"SAM {args.teacher} checkpoint (--sam_checkpoint)",
                        "Download it from https://github.com/facebookresearch/segment-anything#model-checkpoints.")
    if args.data_dir is not None:
        datalist = os.path.join(args.data_dir, "datalist.json")
        read_datalist_info(datalist)
        load_datalist(datalist, "training", limit=args.labels or None)
        validation_items(datalist, args.val_labels)


def check_unlabelled(args, data_dir: str) -> None:
    """Before any stage: a folder of unlabelled images holds readable images, none of the validation or test
    split (checked once the dataset folder is known; the demo is prepared first)."""
    if args.transfer_source == "unlabelled" and args.unlabelled_dir:
        check_unlabelled_folder(os.path.join(data_dir, "datalist.json"), args.unlabelled_dir)


def check_output(out: str) -> str:
    out = os.path.abspath(out)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise TskdError(f"cannot write the output folder '{out}' ({e.strerror or type(e).__name__}); "
                        "choose a folder you can write to with --out.") from e
    return out


def dataset_folder(args, out: str) -> str:
    """``--data_dir``, or the demo prepared under ``out/data``."""
    data_dir = args.data_dir
    if data_dir is None:
        if args.dataset != "demo":
            sys.exit(f"--data_dir is required for dataset '{args.dataset}' (a folder with datalist.json)")
        data_dir = os.path.join(out, "data")
        if not os.path.isfile(os.path.join(data_dir, "datalist.json")):
            print("=== preparing the demo dataset (MNI152 brain MRI from nilearn)", flush=True)
            prepare_demo(data_dir)
    return os.path.abspath(data_dir)


def base_overrides(args, data_dir: str) -> dict:
    """What every stage of a run shares: data, seed, and the image size and validation budget when given."""
    return {"dataset_dir": data_dir, "seed": args.seed, **({"image_size": args.image_size} if args.image_size else {}),
            **({"val_labels": args.val_labels} if args.val_labels is not None else {})}


def label_count(args, data_dir: str) -> str:
    """The masks a run uses, e.g. "5 labels (+ 5 for validation)": the validation masks beside the budget."""
    datalist = os.path.join(data_dir, "datalist.json")
    train = len(load_datalist(datalist, "training", limit=args.labels or None))
    val = len(validation_items(datalist, args.val_labels))
    return f"{train} labels" + (f" (+ {val} for validation)" if val else " (no validation)")


def foundation_overrides(args) -> dict:
    foundation = {"teacher": args.teacher}
    if args.sam_checkpoint:
        foundation["sam_checkpoint"] = os.path.abspath(args.sam_checkpoint)
    return foundation


def teacher_stage(args, data_dir: str, root: str, profile: dict, lora_rank: int | None = None) -> tuple[str, str]:
    """Train the SAM-LoRA teacher into ``root`` (or take ``--teacher_checkpoint``); returns its weights and
    stamp. ``lora_rank`` 0 trains the untuned foundation model's decoder only (no LoRA)."""
    if args.teacher_checkpoint:
        ckpt = os.path.abspath(args.teacher_checkpoint)
        print(f"=== teacher: using the trained teacher {ckpt}", flush=True)
        return ckpt, _stamp({"teacher_checkpoint": file_sha256(ckpt)})
    teacher = {**base_overrides(args, data_dir), **foundation_overrides(args), **stage_budget(profile, "teacher"),
               "labels": args.labels, **({} if lora_rank is None else {"lora_rank": lora_rank})}
    stamp = train_bundle(args.dataset, "teacher", root, teacher)
    return os.path.join(root, "models", "model.pt"), stamp


def transfer_stage(args, data_dir: str, out: str, profile: dict) -> tuple[str, str]:
    """The transfer set for ``--transfer_source`` (made once under ``out``); returns its folder and stamp."""
    size = args.transfer or profile["transfer"]
    if args.transfer_source == "augment":
        return augmented_set(data_dir, out, size, args.labels, args.seed), ""
    if args.transfer_source == "unlabelled":
        return unlabelled_set(data_dir, out, size, args.labels, args.seed, args.unlabelled_dir), ""
    return synthetic_set(args, data_dir, out, size, profile)


def student_stages(args, data_dir: str, out: str, profile: dict, teacher: tuple[str, str], pretrain_root: str,
                   student_root: str, student_seed: int | None = None) -> dict:
    """Pre-train the student by ``--method`` (transfer sets under ``out``) into ``pretrain_root``, then
    fine-tune it on the labels into ``student_root``.

    Returns:
        ``overrides`` (what evaluates and infers with this student), ``pretrain_seconds`` (the
        pre-training stage's training time, 0 for scratch and imagenet_mae) and ``transfer`` (the transfer
        set's folder, "" when there is none).
    """
    teacher_ckpt, teacher_stamp = teacher
    student_base = {**base_overrides(args, data_dir), "fpn": args.fpn}  # every student stage
    if args.num_heads:
        student_base["num_heads"] = args.num_heads
    student = {**student_base, **stage_budget(profile, "student"), "labels": args.labels}
    if student_seed is not None:
        student["seed"] = student_seed
    # What the pyramid's name stands for is part of the stage: a student trained under another definition
    # of "light" is not reused.
    architecture = _stamp(FPN_PRESETS[args.fpn])
    upstream, seconds, transfer_dir = "", 0, ""
    if args.method == "imagenet_mae":
        ckpt = os.path.abspath(args.imagenet_mae_checkpoint)
        student.update(encoder_checkpoint=ckpt, init_head=False, resample_pos_embed=args.imagenet_mae_pos_embed)
        upstream = _stamp({"imagenet_mae": file_sha256(ckpt)}) + architecture
    elif args.method != "scratch":
        transfer_dir, transfer_stamp = transfer_stage(args, data_dir, out, profile)
        pretrain = {**student_base, **foundation_overrides(args), "method": args.method,
                    **pretrain_recipe(profile, args.method),
                    "transfer_file": os.path.join(transfer_dir, "datalist.json"), "teacher_checkpoint": teacher_ckpt}
        upstream = train_bundle(args.dataset, "pretrain", pretrain_root, pretrain,
                                upstream=(teacher_stamp if args.method == "tskd" else "") + transfer_stamp + architecture,
                                config=args.method if args.method in SELF_SUPERVISED else "")
        seconds = _read_json(os.path.join(pretrain_root, "done.json")).get("seconds", 0)
        student["encoder_checkpoint"] = os.path.join(pretrain_root, "models", "model.pt")
        if args.method not in HEAD_PRETRAINED:
            student["init_head"] = False  # an untrained head: the fine-tuning seed initialises it, as for scratch
    train_bundle(args.dataset, "student", student_root, student, upstream=upstream or architecture)
    return {"overrides": {**student_base, **({"seed": student_seed} if student_seed is not None else {})},
            "pretrain_seconds": seconds, "transfer": transfer_dir}


def teacher_check(teacher_root: str, students: dict[str, str]) -> list[str]:
    """Summary lines comparing the teacher's best validation Dice with the students' (name -> bundle root):
    loud when the teacher is below ``WEAK_TEACHER_DICE`` or weaker than a student it teaches."""
    record = read_training_record(teacher_root)
    teacher = record.get("best_metric")
    if teacher is None:
        return []
    lines = [f"Teacher: best validation Dice {teacher:.4f} ({_trained(record)}). Its checkpoint was chosen on these "
             "validation images, so the figure is optimistic; no other labelled image is left to check it on before "
             "distilling (the test split stays unseen until the end). The summary's test Dice is the unbiased one.",
             *still_improving("teacher", record)]
    if teacher < WEAK_TEACHER_DICE:
        lines.append(f"**WARNING: the teacher is weak (validation Dice {teacher:.4f} < {WEAK_TEACHER_DICE}).** "
                     "Distilling its logits teaches its mistakes; train it longer (a larger teacher budget, "
                     "--profile paper) or check its data before trusting a distilled student.")
    for name, root in students.items():
        record = read_training_record(root)
        value = record.get("best_metric")
        if value is None:
            continue
        lines.append(f"Student ({name}): best validation Dice {value:.4f} ({_trained(record)}).")
        lines += still_improving(f"{name} student", record)
        if value > teacher:
            lines.append(f"**WARNING: the teacher (validation Dice {teacher:.4f}) is weaker than the {name} student "
                         f"({value:.4f}).** Task-specific KD's logit term imitates a teacher worse than the student; "
                         "train the teacher longer before relying on TS-KD.")
    return lines


def teacher_record_root(args, teacher_root: str) -> str:
    """The bundle whose ``models/training.json`` describes the teacher: the one trained here, or the bundle a
    ``--teacher_checkpoint`` (``<bundle>/models/model.pt``) comes from."""
    if args.teacher_checkpoint:
        return os.path.dirname(os.path.dirname(os.path.abspath(args.teacher_checkpoint)))
    return teacher_root


def no_teacher_record(args) -> str:
    """The check's line when the teacher has no training record to read."""
    where = f"'{args.teacher_checkpoint}' (--teacher_checkpoint)" if args.teacher_checkpoint else "the teacher"
    return (f"**The teacher was not checked: {where} has no training record (models/training.json beside it), so "
            "its validation Dice is unknown.** Evaluate it (its bundle's evaluate.json) before trusting a student "
            "distilled from it.")


def _trained(record: dict) -> str:
    """How a stage trained, from its ``training.json`` record."""
    return (f"{record['steps']} of {record['budget_steps']} steps, best at step {record['best_step']}"
            + (", stopped early" if record.get("stopped_early") else ""))


def still_improving(name: str, record: dict) -> list[str]:
    """A loud line when a stage used its whole budget and its best validation came at the last check: it was
    stopped by the cap, not by a plateau."""
    steps, budget = record.get("steps"), record.get("budget_steps")
    if not budget or steps != budget or record.get("stopped_early") or record.get("best_step") != steps:
        return []
    return [f"**WARNING: the {name} was still improving when its budget ran out** (best validation at its last "
            f"step, {steps}): a larger step budget would likely make it better (a bundle's --steps; for "
            "run_pipeline.py and run_grid.py, the profile's)."]


def run(args) -> None:
    check_args(args)
    out = check_output(args.out)
    data_dir = dataset_folder(args, out)
    check_unlabelled(args, data_dir)
    profile = PROFILES[args.profile]
    base, foundation = base_overrides(args, data_dir), foundation_overrides(args)
    teacher_root = os.path.join(out, "teacher")
    teacher_ckpt, teacher_stamp = teacher_stage(args, data_dir, teacher_root, profile)
    teacher_record = teacher_record_root(args, teacher_root)
    if args.method == "tskd":  # the one method that learns from the trained teacher
        check = teacher_check(teacher_record, {}) or [no_teacher_record(args)]
        print("\n".join(["=== teacher check before distilling:", *check]), flush=True)
    pretrain_root, student_root = os.path.join(out, f"pretrain_{args.method}"), os.path.join(out, f"student_{args.method}")
    student = student_stages(args, data_dir, out, profile, (teacher_ckpt, teacher_stamp), pretrain_root, student_root)
    student_base = student["overrides"]
    teacher_eval = {**base, **foundation, "ckpt_path": teacher_ckpt}
    reports = {"teacher": evaluate_bundle(args.dataset, "teacher", teacher_root, teacher_eval),
               "student": evaluate_bundle(args.dataset, "student", student_root, student_base)}
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(reports, f, indent=1)
    print("=== predictions on the test split -> predictions.png", flush=True)
    grid = {"teacher": infer_bundle(args.dataset, "teacher", teacher_root, teacher_eval),
            f"student ({args.method})": infer_bundle(args.dataset, "student", student_root, student_base)}
    save_prediction_grid(os.path.join(data_dir, "datalist.json"), grid, os.path.join(out, "predictions.png"))
    lines = [f"# tskd on {args.dataset} ({args.profile} profile, student: {args.method}, seed {args.seed})", "",
             f"Masks used: {label_count(args, data_dir)}.", ""]
    if not validation_items(os.path.join(data_dir, "datalist.json"), args.val_labels):
        lines += ["No validation images: every stage kept its last epoch's weights (no model selection, no early "
                  "stopping).", ""]
    if student["transfer"]:
        lines += [*transfer_report(args.transfer_source, student["transfer"]), ""]
    check = teacher_check(teacher_record, {args.method: student_root}) or [no_teacher_record(args)]
    lines += [*check, ""]
    for name, report in reports.items():
        lines += [f"## {name}", "", "```", format_report(report), "```", ""]
    lines += ["![test images, ground truth and predictions](predictions.png)", ""]
    summary = "\n".join(lines)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary)
    print("\n" + summary + f"\nwritten: {out}/metrics.json, {out}/summary.md, {out}/predictions.png")


if __name__ == "__main__":
    main()
