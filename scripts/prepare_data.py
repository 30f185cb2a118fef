"""Write a dataset as 2D images + masks and a MONAI datalist JSON.

    python scripts/prepare_data.py demo --out data/demo
    python scripts/prepare_data.py transfer --datalist data/demo/datalist.json --out data/demo/transfer --size 1000
"""

from __future__ import annotations

import argparse

from common.data import make_transfer_set, prepare_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    demo = sub.add_parser("demo", help="brain MRI slices (MNI152 template shipped in nilearn): background, GM, WM")
    demo.add_argument("--out", required=True, help="output folder (replaced)")
    demo.add_argument("--image_size", type=int, default=128)
    demo.add_argument("--stride", type=int, default=2, help="keep every n-th axial slice")
    demo.add_argument("--seed", type=int, default=0, help="split seed")
    transfer = sub.add_parser("transfer", help="unlabelled transfer set: the labelled images + seeded affine views")
    transfer.add_argument("--datalist", required=True, help="the dataset's datalist.json")
    transfer.add_argument("--out", required=True, help="output folder (replaced)")
    transfer.add_argument("--size", type=int, default=1000, help="number of images (paper: 1,000-3,000)")
    transfer.add_argument("--labels", type=int, default=0, help="use the first N labelled images (0: all)")
    transfer.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.dataset == "transfer":
        info = make_transfer_set(args.datalist, args.out, size=args.size, labels=args.labels, seed=args.seed)
        print(f"transfer set written to {args.out}: {len(info['training'])} images")
    if args.dataset == "demo":
        info = prepare_demo(args.out, image_size=args.image_size, stride=args.stride, seed=args.seed)
        counts = ", ".join(f"{k} {len(info[k])}" for k in ("training", "validation", "test"))
        print(f"demo dataset written to {args.out}: {counts} slices of {args.image_size}² "
              f"at {info['spacing'][0]:.3f} mm; classes {list(info['labels'].values())}")


if __name__ == "__main__":
    main()
