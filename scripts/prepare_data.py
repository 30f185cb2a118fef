"""Write a dataset as 2D images + masks and a MONAI datalist JSON.

    python scripts/prepare_data.py demo --out data/demo
    python scripts/prepare_data.py {kidneyus,autooral,chaos,ph2,drive} --src <as distributed> --out data/<name>
    python scripts/prepare_data.py folder --src <images/ + labels/> --out data/mine --classes tumour=1,cyst=2
    python scripts/prepare_data.py transfer --datalist data/demo/datalist.json --out data/demo/transfer --size 1000

Every image and mask is checked before anything is written; problems are listed together, and the
output folder is left untouched.
"""

from __future__ import annotations

import argparse
import sys

from common.data import DATASETS, make_transfer_set, prepare_dataset, prepare_demo
from common.errors import TskdError, install_excepthook


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    demo = sub.add_parser("demo", help="brain MRI slices (MNI152 template shipped in nilearn): background, GM, WM")
    demo.add_argument("--out", required=True, help="output folder (replaced)")
    demo.add_argument("--image_size", type=int, default=128)
    demo.add_argument("--stride", type=int, default=2, help="keep every n-th axial slice")
    demo.add_argument("--seed", type=int, default=0, help="split seed")
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
    args = parser.parse_args()
    install_excepthook()
    try:
        if args.dataset == "transfer":
            info = make_transfer_set(args.datalist, args.out, size=args.size, labels=args.labels, seed=args.seed)
            print(f"transfer set written to {args.out}: {len(info['training'])} images")
            return
        if args.dataset == "demo":
            info = prepare_demo(args.out, image_size=args.image_size, stride=args.stride, seed=args.seed)
        else:
            info = prepare_dataset(args.dataset, args.src, args.out, image_size=args.image_size,
                                   classes=getattr(args, "classes", ""), channels=getattr(args, "channels", None),
                                   seed=args.seed, test_fraction=args.test_fraction, val_fraction=args.val_fraction,
                                   spacing=tuple(args.spacing) if getattr(args, "spacing", None) else None)
    except TskdError as e:
        sys.exit(f"prepare_data: {e.message}")
    except OSError as e:
        sys.exit(f"prepare_data: cannot write '{args.out}' ({e.strerror or type(e).__name__}: {e.filename or ''})")
    counts = ", ".join(f"{k} {len(info[k])}" for k in ("training", "validation", "test"))
    print(f"{args.dataset} written to {args.out}: {counts} images of {info['image_size']}²; "
          f"classes {list(info['labels'].values())}" + (f"; label budgets {info['budgets']}" if info.get("budgets") else ""))


if __name__ == "__main__":
    main()
