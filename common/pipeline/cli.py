"""The command lines: each parses its arguments and calls one function of the package.

    tskd-run     (scripts/run_pipeline.py)  the main job              -> common.pipeline.run_pipeline
    tskd-grid    (scripts/run_grid.py)      the comparison grid       -> common.pipeline.grid.run_grid
    tskd-prepare (scripts/prepare_data.py)  a dataset as a datalist   -> common.data.prepare_dataset / prepare_demo
    tskd-export  (scripts/export_bundle.py) a model-zoo bundle        -> common.pipeline.export.export_bundle

An error the user can fix ends the command with one line, ``<command>: <what and the fix>``, and exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from common.errors import TskdError, install_excepthook
from common.models import FPN_PRESETS
from common.pipeline.profiles import METHODS, PROFILES

__all__ = ["run_main", "grid_main", "prepare_main", "export_main"]

TRANSFER_HELP = ("(default: the profile's) synth: DDPM samples (the paper); augment: affine views of the labelled "
                 "images; unlabelled: real images without masks (--unlabelled_dir, or the training images beyond "
                 "--labels) and their affine views")
FPN_HELP = ("the student's pyramid: skip (default: the light pyramid + a convolutional stem joined at full "
            "resolution), light (cheaper than its encoder) or the paper's")
BUDGET_HELP = ("multiply the teacher's and the students' step caps by this (the reference keeps x1); auto (default): "
               "time a few steps here and take the largest of 1, 1.5, 2 that keeps the quick main job within its "
               "15 min (1 for profiles without a time target); 1: the profile's own budgets. Recorded in OUT/budget.json "
               "and reused when the run goes on")
ISOLATE_HELP = ("run each stage in its own process (python -m monai.bundle run), so that a crash of one stage "
                "cannot take this command down; default: in this process")


def _call(command: str, function, *args) -> None:
    install_excepthook()
    try:
        function(*args)
    except TskdError as e:
        sys.exit(f"{command}: {e.message}")


def _shared(parser: argparse.ArgumentParser) -> None:
    """Options the main job and the grid share."""
    parser.add_argument("--dataset", default="demo", help="bundle prefix: bundles/<dataset>_{teacher,student,...}")
    parser.add_argument("--data_dir", default=None,
                        help="folder with datalist.json (default: prepare the demo in OUT/data)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--transfer_source", choices=["synth", "augment", "unlabelled"], default=None, help=TRANSFER_HELP)
    parser.add_argument("--unlabelled_dir", default="", help="folder of unlabelled images, for --transfer_source unlabelled")
    parser.add_argument("--denoiser", choices=["unet", "swin"], default="unet", help="the DDPM's denoiser")
    parser.add_argument("--val_labels", type=int, default=None,
                        help="validation images (masks) that pick checkpoints and stop training early (default: the "
                             "dataset's whole validation split; 0: none, every stage keeps its last weights)")
    parser.add_argument("--teacher", default="litemedsam", help="litemedsam (embedded) or vit_b / vit_l / vit_h")
    parser.add_argument("--sam_checkpoint", default="", help="official SAM checkpoint, for --teacher vit_*")
    parser.add_argument("--fpn", choices=sorted(FPN_PRESETS), default="skip", help=FPN_HELP)
    parser.add_argument("--imagenet_mae_checkpoint", default="",
                        help="MAE-lite's ImageNet ViT-Tiny weights, for --method imagenet_mae")
    parser.add_argument("--imagenet_mae_pos_embed", action="store_true",
                        help="resample MAE-lite's position embeddings to the student's grid (default: not loaded "
                             "when the grid differs, as the paper)")
    parser.add_argument("--num_heads", type=int, default=0,
                        help="attention heads of the student's ViT-Tiny (default: 3; imagenet_mae: as the checkpoint "
                             "records)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--image_size", type=int, default=0, help="input size for every stage (default: the bundle's)")
    parser.add_argument("--isolate_stages", action="store_true", help=ISOLATE_HELP)
    parser.add_argument("--budget_scale", default="auto", help=BUDGET_HELP)


def run_parser() -> argparse.ArgumentParser:
    from common.pipeline import run

    parser = argparse.ArgumentParser(prog="tskd-run", description=run.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _shared(parser)
    parser.add_argument("--method", choices=METHODS, default="tskd", help="student pre-training")
    parser.add_argument("--transfer", type=int, default=0, help="transfer-set size (default: the profile's)")
    parser.add_argument("--labels", type=int, default=0, help="labelled training images to use (0: all)")
    parser.add_argument("--teacher_checkpoint", default="",
                        help="an already trained teacher (a teacher bundle's models/model.pt): skips teacher training")
    parser.add_argument("--out", default="runs/demo")
    return parser


def run_main(argv: list[str] | None = None) -> None:
    from common.pipeline.config import RunConfig
    from common.pipeline.run import run_pipeline

    args = vars(run_parser().parse_args(argv))
    isolate = args.pop("isolate_stages")
    _call("run_pipeline", run_pipeline, RunConfig(**args), isolate)


def grid_parser() -> argparse.ArgumentParser:
    from common.pipeline import grid

    parser = argparse.ArgumentParser(prog="tskd-grid", description=grid.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _shared(parser)
    parser.add_argument("--methods", default="scratch,mae,mocov3,takd,tskd", help=f"comma-separated, of {', '.join(METHODS)}")
    parser.add_argument("--labels", default="5,10,all", help="label budgets (numbers of labelled images, or all)")
    parser.add_argument("--transfer", default="", help="transfer-set sizes (default: the profile's)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds per cell: --seed, --seed+1, ...; each draws its own transfer set, pre-training "
                             "and fine-tuning (the teacher of a label budget is trained once, with --seed)")
    parser.add_argument("--shared_pretraining", action="store_true",
                        help="the seeds of a label budget share the first seed's transfer set and pre-training and "
                             "vary only the fine-tuning (cheaper; ± then omits the pre-training's spread; grid "
                             "folders written before 2026-12-04 ran this way)")
    parser.add_argument("--no_reference", action="store_true", help="leave out the DynUNet reference row")
    parser.add_argument("--lora_ranks", default="",
                        help="teacher diagnostics: LoRA ranks to train and measure at the largest label budget "
                             "(0: untuned foundation model; default: 0 and the bundle's rank; 'none': skip)")
    parser.add_argument("--tracking", choices=["mlflow", "none"], default="mlflow")
    parser.add_argument("--qualitative", type=int, default=4, help="test images in qualitative.png (0: none)")
    parser.add_argument("--report_only", action="store_true", help="rewrite the tables and plots from OUT/cells")
    parser.add_argument("--workers", type=int, default=1,
                        help="cells run at once, each in its own process (one per GPU where there are GPUs; on "
                             "a CPU they share the cores)")
    parser.add_argument("--worker_threads", type=int, default=0,
                        help="torch threads per worker (default: the cores shared out; give the single-process "
                             "count to reproduce its results bit for bit)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: worker processes on this machine; ray: a Ray cluster (--ray_address, or "
                             "Ray's local mode with --workers CPUs)")
    parser.add_argument("--ray_address", default="", help="a running Ray cluster's address (ray start --head)")
    parser.add_argument("--out", default="runs/grid")
    return parser


def grid_main(argv: list[str] | None = None) -> None:
    from common.pipeline.grid import GridSpec, run_grid

    args = vars(grid_parser().parse_args(argv))
    known = {f.name for f in dataclasses.fields(GridSpec)}
    _call("run_grid", run_grid, GridSpec(**{k: v for k, v in args.items() if k in known}))


def prepare_parser() -> argparse.ArgumentParser:
    from common.data import DATASETS

    parser = argparse.ArgumentParser(prog="tskd-prepare", description=PREPARE_DOC,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    demo = sub.add_parser("demo", help="brain MRI slices (MNI152 template shipped in nilearn): background, GM, WM")
    demo.add_argument("--out", required=True, help="output folder (replaced)")
    demo.add_argument("--image_size", type=int, default=128)
    demo.add_argument("--stride", type=int, default=2, help="keep every n-th axial slice")
    demo.add_argument("--seed", type=int, default=0, help="split seed")
    vessels = sub.add_parser("vessels", help="synthetic retinal vessels in DRIVE's layout (thin structures; made here, "
                             "converted as DRIVE)")
    vessels.add_argument("--out", required=True, help="output folder (replaced only on success)")
    vessels.add_argument("--image_size", type=int, default=128)
    vessels.add_argument("--n_train", type=int, default=20, help="training images (DRIVE: 20)")
    vessels.add_argument("--n_test", type=int, default=20, help="test images (DRIVE: 20)")
    vessels.add_argument("--seed", type=int, default=0, help="image and split seed")
    for name in [*DATASETS, "folder"]:
        p = sub.add_parser(name, help=f"convert {name} from its distribution layout" if name != "folder"
                           else "any images/ + labels/ folder (PNG, JPG, BMP, TIF, NIfTI, DICOM)")
        p.add_argument("--src", required=True, help="the dataset folder as distributed")
        p.add_argument("--out", required=True, help="output folder (replaced only on success)")
        p.add_argument("--image_size", type=int, default=None, help="output side (default: the paper's)")
        p.add_argument("--seed", type=int, default=0, help="split seed")
        p.add_argument("--test_fraction", type=float, default=0.2)
        p.add_argument("--val_fraction", type=float, default=0.1,
                       help="share for validation; 0: none, so every labelled image can be trained on (the last "
                            "epoch's weights are kept)")
        if name == "folder":
            p.add_argument("--classes", default="", help="name=value,... (default: the mask values found)")
            p.add_argument("--channels", type=int, choices=[1, 3], default=None)
            p.add_argument("--spacing", type=float, nargs=2, metavar=("ROWS_MM", "COLS_MM"), default=None,
                           help="pixel spacing in mm of images whose format has none (PNG, JPG...); without it HD95 "
                                "is reported in pixels")
    transfer = sub.add_parser("transfer", help="unlabelled transfer set: the labelled images + seeded affine views")
    transfer.add_argument("--datalist", required=True, help="the dataset's datalist.json")
    transfer.add_argument("--out", required=True, help="output folder (replaced)")
    transfer.add_argument("--size", type=int, default=1000, help="number of images (paper: 1,000-3,000)")
    transfer.add_argument("--labels", type=int, default=0, help="use the first N labelled images (0: all)")
    transfer.add_argument("--seed", type=int, default=0)
    return parser


PREPARE_DOC = """Write a dataset as 2D images + masks and a MONAI datalist JSON.

    tskd-prepare demo --out data/demo
    tskd-prepare {kidneyus,autooral,chaos,ph2,drive} --src <as distributed> --out data/<name>
    tskd-prepare folder --src <images/ + labels/> --out data/mine --classes tumour=1,cyst=2
    tskd-prepare vessels --out data/vessels   (synthetic, DRIVE's layout; then --dataset drive)
    tskd-prepare transfer --datalist data/demo/datalist.json --out data/demo/transfer --size 1000

Every image and mask is checked before anything is written; problems are listed together, and the
output folder is left untouched.
"""


def prepare(args: argparse.Namespace) -> None:
    from common.data import make_transfer_set, prepare_dataset, prepare_demo

    try:
        if args.dataset == "transfer":
            info = make_transfer_set(args.datalist, args.out, size=args.size, labels=args.labels, seed=args.seed)
            print(f"transfer set written to {args.out}: {len(info['training'])} images")
            return
        if args.dataset == "demo":
            info = prepare_demo(args.out, image_size=args.image_size, stride=args.stride, seed=args.seed)
        elif args.dataset == "vessels":
            from common.data.vessels import prepare_vessels

            info = prepare_vessels(args.out, image_size=args.image_size, n_train=args.n_train, n_test=args.n_test,
                                   seed=args.seed)
        else:
            info = prepare_dataset(args.dataset, args.src, args.out, image_size=args.image_size,
                                   classes=getattr(args, "classes", ""), channels=getattr(args, "channels", None),
                                   seed=args.seed, test_fraction=args.test_fraction, val_fraction=args.val_fraction,
                                   spacing=tuple(args.spacing) if getattr(args, "spacing", None) else None)
    except OSError as e:
        raise TskdError(f"cannot write '{args.out}' ({e.strerror or type(e).__name__}: {e.filename or ''})") from None
    counts = ", ".join(f"{k} {len(info[k])}" for k in ("training", "validation", "test"))
    print(f"{args.dataset} written to {args.out}: {counts} images of {info['image_size']}²; "
          f"classes {list(info['labels'].values())}" + (f"; label budgets {info['budgets']}" if info.get("budgets") else ""))


def prepare_main(argv: list[str] | None = None) -> None:
    _call("prepare_data", prepare, prepare_parser().parse_args(argv))


def export_parser() -> argparse.ArgumentParser:
    from common.pipeline import export

    parser = argparse.ArgumentParser(prog="tskd-export", description=export.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="bundle folder (bundles/<name>) or name")
    parser.add_argument("--weights", required=True, help="trained weights (a run's models/model.pt)")
    parser.add_argument("--out", default="dist", help="folder to write <name>/ into")
    parser.add_argument("--metrics", help="the run's eval/metrics.json (default: beside the weights' models/ folder)")
    parser.add_argument("--version", help="bundle version (default: metadata.json's)")
    parser.add_argument("--changelog", help="changelog entry for this version")
    return parser


def export_main(argv: list[str] | None = None) -> None:
    from common.pipeline.export import export_bundle

    args = export_parser().parse_args(argv)
    _call("export_bundle", export_bundle, args.bundle, args.weights, args.out, args.metrics, args.version,
          args.changelog)
