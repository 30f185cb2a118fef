"""Write a dataset as 2D images + masks and a MONAI datalist JSON.

    python scripts/prepare_data.py demo --out data/demo
"""

from __future__ import annotations

import argparse

from common.data import prepare_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="dataset", required=True)
    demo = sub.add_parser("demo", help="brain MRI slices (MNI152 template shipped in nilearn): background, GM, WM")
    demo.add_argument("--out", required=True, help="output folder (replaced)")
    demo.add_argument("--image_size", type=int, default=128)
    demo.add_argument("--stride", type=int, default=2, help="keep every n-th axial slice")
    demo.add_argument("--seed", type=int, default=0, help="split seed")
    args = parser.parse_args()
    if args.dataset == "demo":
        info = prepare_demo(args.out, image_size=args.image_size, stride=args.stride, seed=args.seed)
        counts = ", ".join(f"{k} {len(info[k])}" for k in ("training", "validation", "test"))
        print(f"demo dataset written to {args.out}: {counts} slices of {args.image_size}² "
              f"at {info['spacing'][0]:.3f} mm; classes {list(info['labels'].values())}")


if __name__ == "__main__":
    main()
