"""Real nnU-Net v2 on a tskd dataset split, beside the DynUNet reference: how close the reference row of the
comparison is to the tool users actually run.

nnU-Net is not a dependency of tskd; it runs through its own command lines (``nnUNetv2_plan_and_preprocess``,
``nnUNetv2_train``, ``nnUNetv2_predict``) from whatever environment has them, e.g. a venv of its own:
``python -m venv nnunet-venv && nnunet-venv/bin/pip install torch==2.14.1 nnunetv2``.

The split is tskd's: the first ``labels`` training images train, the validation split is nnU-Net's fold-0
validation (its ``splits_final.json``), and the test split is predicted and scored with the metrics every tskd
evaluation uses (``score_label_maps``), so both rows are read off the same images the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from common.data import load_datalist, read_datalist_info
from common.data.io import image_stem
from common.engines import score_label_maps
from common.errors import DataError, TskdError

__all__ = ["NNUNET_INSTALL", "find_nnunet", "write_nnunet_dataset", "run_nnunet", "score_nnunet"]

NNUNET_INSTALL = ("install nnU-Net v2 beside tskd, in an environment of its own: `python -m venv nnunet-venv && "
                  "nnunet-venv/bin/pip install torch==2.14.1 nnunetv2`, then pass --nnunet_bin nnunet-venv/bin")
TOOLS = ("nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_predict")
ITERATIONS_PER_EPOCH = 250  # nnUNetTrainer's num_iterations_per_epoch


def find_nnunet(bin_dir: str = "") -> str:
    """The folder holding nnU-Net v2's command lines (``bin_dir``, or found on PATH), or one error saying how to
    install it."""
    for tool in TOOLS:
        path = os.path.join(bin_dir, tool) if bin_dir else shutil.which(tool)
        if not path or not os.access(path, os.X_OK):
            raise TskdError(f"nnU-Net v2's `{tool}` was not found{' in ' + bin_dir if bin_dir else ' on PATH'}: "
                            f"{NNUNET_INSTALL}.")
    return os.path.dirname(os.path.abspath(path))


def _copy_nifti(source: str, target: str) -> None:
    if not source.endswith((".nii", ".nii.gz")):
        raise DataError(f"'{source}': the nnU-Net comparison takes NIfTI images (.nii.gz); convert the dataset with "
                        "tskd-prepare first.")
    image = nib.load(source)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header), target)


def write_nnunet_dataset(data_dir: str, labels: int, raw_root: str, dataset_id: int, name: str) -> dict:
    """nnU-Net's raw dataset (``DatasetXXX_name``: imagesTr/labelsTr of the first ``labels`` training images and
    the validation split, imagesTs of the test split, dataset.json) and the fold-0 split to train it on.

    Returns:
        ``folder``, ``dataset`` (``DatasetXXX_name``), ``split`` ({"train": cases, "val": cases}) and ``test``
        (case -> the test item).
    """
    datalist = os.path.join(data_dir, "datalist.json")
    info = read_datalist_info(datalist)
    if int(info.get("channels", 1)) != 1:
        raise DataError(f"'{datalist}' has {info.get('channels')} channels; the nnU-Net comparison handles one.")
    train = load_datalist(datalist, "training", limit=labels or None)
    val = load_datalist(datalist, "validation")
    test = load_datalist(datalist, "test")
    dataset = f"Dataset{dataset_id:03d}_{name}"
    folder = os.path.join(raw_root, dataset)
    shutil.rmtree(folder, ignore_errors=True)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(folder, sub))
    for item in train + val:
        case = image_stem(item["image"])
        _copy_nifti(item["image"], os.path.join(folder, "imagesTr", f"{case}_0000.nii.gz"))
        _copy_nifti(item["label"], os.path.join(folder, "labelsTr", f"{case}.nii.gz"))
    for item in test:
        _copy_nifti(item["image"], os.path.join(folder, "imagesTs", f"{image_stem(item['image'])}_0000.nii.gz"))
    classes = {name: int(value) for value, name in info["labels"].items()}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": info.get("modality", "image")}, "labels": classes,
                   "numTraining": len(train) + len(val), "file_ending": ".nii.gz"}, f, indent=1)
    return {"folder": folder, "dataset": dataset, "split": {"train": [image_stem(i["image"]) for i in train],
                                                             "val": [image_stem(i["image"]) for i in val]},
            "test": {image_stem(i["image"]): i for i in test}}


def _call(bin_dir: str, tool: str, args: list[str], env: dict, log: str) -> float:
    start = time.time()
    with open(log, "a") as out:
        out.write(f"\n$ {tool} {' '.join(args)}\n")
        out.flush()
        done = subprocess.run([os.path.join(bin_dir, tool), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise TskdError(f"`{tool}` failed (exit {done.returncode}); its output is in {log}.")
    return time.time() - start


def run_nnunet(data_dir: str, labels: int, work: str, dataset_id: int, name: str, epochs: Sequence[int], bin_dir: str,
               threads: int = 2) -> dict:
    """Plan and preprocess once, then for each of ``epochs`` train (2D, fold 0 = tskd's split,
    ``nnUNetTrainer_<epochs>epochs`` on the CPU) and predict the test split, with nnU-Net v2 in ``work``.

    Returns:
        The dataset's facts (``write_nnunet_dataset``), nnU-Net's 2D ``plan`` (batch, patch, spacing), the planning
        seconds and ``runs``: per epochs, its ``trainer``, ``steps``, ``predictions`` folder and ``seconds`` (train,
        predict). The output of every command is in ``work/nnunet.log``.
    """
    os.makedirs(work, exist_ok=True)
    roots = {k: os.path.join(work, k) for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    env = {**os.environ, **roots, "nnUNet_n_proc_DA": str(threads), "OMP_NUM_THREADS": str(threads)}
    facts = write_nnunet_dataset(data_dir, labels, roots["nnUNet_raw"], dataset_id, name)
    log = os.path.join(work, "nnunet.log")
    plan_seconds = _call(bin_dir, "nnUNetv2_plan_and_preprocess",
                         ["-d", str(dataset_id), "-c", "2d", "-np", str(threads), "--verify_dataset_integrity"], env, log)
    preprocessed = os.path.join(roots["nnUNet_preprocessed"], facts["dataset"])
    with open(os.path.join(preprocessed, "splits_final.json"), "w") as f:
        json.dump([facts["split"]], f, indent=1)
    runs = {}
    for n in epochs:
        trainer = "nnUNetTrainer_1epoch" if n == 1 else f"nnUNetTrainer_{n}epochs"
        seconds = {"train": _call(bin_dir, "nnUNetv2_train",
                                  [str(dataset_id), "2d", "0", "-tr", trainer, "-device", "cpu"], env, log)}
        predictions = os.path.join(work, f"predictions_{trainer}")
        seconds["predict"] = _call(bin_dir, "nnUNetv2_predict",
                                   ["-i", os.path.join(facts["folder"], "imagesTs"), "-o", predictions, "-d",
                                    str(dataset_id), "-c", "2d", "-f", "0", "-tr", trainer, "-device", "cpu",
                                    "-npp", "1", "-nps", "1"], env, log)
        runs[n] = {"trainer": trainer, "steps": n * ITERATIONS_PER_EPOCH, "predictions": predictions,
                   "seconds": seconds}
    plan = json.load(open(os.path.join(preprocessed, "nnUNetPlans.json")))["configurations"]["2d"]
    return {**facts, "plan": {k: plan.get(k) for k in ("batch_size", "patch_size", "spacing")},
            "plan_seconds": plan_seconds, "runs": runs}


def score_nnunet(predictions: str, test: dict, class_names: list[str], unit: str = "mm") -> dict:
    """nnU-Net's test predictions scored as every tskd evaluation is (``score_label_maps``), in the test split's
    order."""
    pairs, spacing = [], None
    for case, item in test.items():
        path = os.path.join(predictions, f"{case}.nii.gz")
        if not os.path.isfile(path):
            raise TskdError(f"nnU-Net wrote no prediction for test case {case} ({path}).")
        label = nib.load(item["label"])
        spacing = spacing or label.header.get_zooms()[:2]
        pairs.append((np.squeeze(np.asarray(nib.load(path).dataobj)), np.asarray(label.dataobj)))
    return score_label_maps(pairs, class_names, spacing, unit)
