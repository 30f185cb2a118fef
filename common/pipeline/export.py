"""Write a self-contained model-zoo bundle: it runs from any folder, in an environment without tskd.

    tskd-export bundles/demo_student --weights runs/demo/student_tskd/models/model.pt --out dist/

The bundle's configs are copied with every ``common.`` component rewritten to ``scripts.common.``, and the
part of ``common/`` they reach (followed through imports) is copied into the bundle's ``scripts/``. The
weights go to ``models/``; ``large_files.yml`` lists every file over 25 MB with its sha256 and a url to fill
in once uploaded; ``metadata.json`` gets the version, a changelog entry, ``eval_metrics`` from the
evaluation of the run that wrote the weights (``<run>/eval/metrics.json``, or ``--metrics``) and
``required_packages_version`` read from the installed packages the copied code imports. Run it as the zoo
runs bundles, from the bundle folder:

    cd dist/demo_student && python -m monai.bundle run --config_file configs/inference.json --dataset_dir …
"""

from __future__ import annotations

import ast
import datetime
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

from common.data.io import atomic_folder
from common.errors import TskdError
from common.pipeline.bundles import BUNDLES
from common.provenance import file_sha256

__all__ = ["export_bundle", "copy_code", "third_party_versions", "eval_metrics"]

# The folder that holds the ``common`` package (its modules are copied from there).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PACKAGE = "common"
TARGET = "scripts.common"
LARGE_FILE_MB = 25
# Versions the zoo's metadata has their own fields for.
OWN_FIELDS = {"torch", "monai", "numpy"}
_REFERENCE = re.compile(r"(?<![\w.])common((?:\.\w+)*)")
_IMPORT = re.compile(r"^(\s*)(from|import) common(\.[\w.]+)?(?=\s|$)", re.M)


def _module_file(name: str) -> str | None:
    """The source file of module ``name`` (``common.x.y``) in this repository, or None."""
    base = os.path.join(ROOT, *name.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def _imports_of(path: str) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``from common… import names`` / ``import common…`` in a file,
    including those inside functions."""
    found = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == PACKAGE]
    return found


def _needed_modules(configs: dict[str, object]) -> set[str]:
    """The modules of ``common`` the configs reach, closed under the imports of those modules.

    A name re-exported by a package (``common.models.build_vit_fpn``) counts as its defining module;
    a package's ``__init__`` is rewritten later to re-export only what was copied.
    """
    queue: list[tuple[str, list[str]]] = []
    for text in _strings(configs):
        for match in _REFERENCE.finditer(text):
            parts = match.group(1).lstrip(".").split(".") if match.group(1) else []
            # the longest prefix that is a module; the next part is a name in it
            for k in range(len(parts), -1, -1):
                module = ".".join([PACKAGE, *parts[:k]])
                if _module_file(module):
                    queue.append((module, parts[k:k + 1]))
                    break
    needed: set[str] = set()
    while queue:
        module, names = queue.pop()
        path = _module_file(module)
        if path is None:
            continue
        if path.endswith("__init__.py"):
            # a package: the names come from its submodules (or are submodules themselves)
            exports = {n: m for m, ns in _imports_of(path) for n in ns}
            for name in names:
                sub = f"{module}.{name}"
                queue.append((sub, []) if _module_file(sub) else (exports.get(name, module), [name]))
            if not names and module not in needed:
                needed.add(module)
                queue += [(m, ns) for m, ns in _imports_of(path)]
            needed.add(module)
            continue
        if module in needed:
            continue
        needed.add(module)
        queue += _imports_of(path)
    # every parent package, and the errors module the package root imports
    for module in list(needed):
        parts = module.split(".")
        needed.update(".".join(parts[:k]) for k in range(1, len(parts)))
    return needed | {f"{PACKAGE}.errors"}


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _rewrite_config(value):
    """Every ``common.`` reference (``_target_``, ``$`` expressions, ``$import common``) to ``scripts.common``."""
    if isinstance(value, str):
        if value == "$import common":  # MONAI binds the dotted name of ``import a.b``, not ``a``
            return "$import scripts"
        return _REFERENCE.sub(lambda m: TARGET + m.group(1), value)
    if isinstance(value, dict):
        return {k: _rewrite_config(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_config(v) for v in value]
    return value


def _package_init(path: str, module: str, needed: set[str]) -> str:
    """A package ``__init__`` that re-exports only what comes from copied modules."""
    tree = ast.parse(open(path).read())
    lines = open(path).read().splitlines()
    keep: list[str] = []
    for node in tree.body:
        text = "\n".join(lines[node.lineno - 1:node.end_lineno])
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            if node.module == module:  # from common import bundle, data, …
                names = [a.name for a in node.names if f"{module}.{a.name}" in needed]
                if names:
                    keep.append(f"from {module} import {', '.join(names)}")
                continue
            if node.module not in needed:
                continue
        keep.append(text)
    return "\n".join(keep) + "\n"


def copy_code(configs: dict[str, object], scripts_dir: str) -> list[str]:
    """Copy the modules of ``common`` the configs need into ``scripts_dir/common``, imports rewritten.

    Returns:
        The copied module names.
    """
    needed = _needed_modules(configs)
    os.makedirs(scripts_dir, exist_ok=True)
    with open(os.path.join(scripts_dir, "__init__.py"), "w") as f:
        f.write('"""Code of this bundle, copied from the tskd `common` package by scripts/export_bundle.py."""\n\n'
                "from scripts import common\n")
    for module in sorted(needed):
        src = _module_file(module)
        rel = os.path.relpath(src, ROOT)
        dst = os.path.join(scripts_dir, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        text = _package_init(src, module, needed) if src.endswith("__init__.py") else open(src).read()
        text = _IMPORT.sub(lambda m: f"{m.group(1)}{m.group(2)} {TARGET}{m.group(3) or ''}", text)
        with open(dst, "w") as f:
            f.write(text)
    return sorted(needed)


def third_party_versions(scripts_dir: str) -> dict[str, str]:
    """Installed versions of the distributions the copied code imports (torch, monai and numpy have
    their own metadata fields)."""
    distributions = importlib.metadata.packages_distributions()
    top: set[str] = set()
    for folder, _, files in os.walk(scripts_dir):
        for name in files:
            if name.endswith(".py"):
                for node in ast.walk(ast.parse(open(os.path.join(folder, name)).read())):
                    if isinstance(node, ast.Import):
                        top.update(a.name.split(".")[0] for a in node.names)
                    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                        top.add(node.module.split(".")[0])
    # The image readers MONAI's loader picks for the bundle's formats (nibabel/png/itk).
    top.update(m for m in ("nibabel", "PIL", "itk") if importlib.util.find_spec(m))
    versions = {}
    for module in sorted(top - set(sys.stdlib_module_names) - {"scripts", "__future__"}):
        try:  # a distribution named as the module (itk, whose files are spread over itk-* parts)
            dists = [importlib.metadata.distribution(module).metadata["Name"]]
        except importlib.metadata.PackageNotFoundError:
            dists = distributions.get(module, [])
        for dist in dists:
            if dist.lower() not in OWN_FIELDS:
                versions[dist] = importlib.metadata.version(dist)
    return dict(sorted(versions.items()))


def eval_metrics(metrics_file: str) -> dict:
    """The zoo's ``eval_metrics`` from an ``eval/metrics.json`` written by the bundle's evaluate.json."""
    with open(metrics_file) as f:
        report = json.load(f)
    out = {"mean_dice": report["mean_dice"], "mean_iou": report.get("mean_iou"),
           f"mean_hd95_{report.get('hd95_unit', 'px')}": report.get("mean_hd95"), "test_images": report.get("images")}
    for name, values in report.get("per_class", {}).items():
        out[f"{name}_dice"] = values["dice"]
    return {k: v for k, v in out.items() if v is not None}


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export_bundle(bundle: str, weights: str, out: str, metrics: str | None = None, version: str | None = None,
                  changelog: str | None = None) -> str:
    """Write ``out/<bundle name>`` (see the module docstring). Returns its path."""
    bundle = bundle if os.path.isdir(bundle) else os.path.join(BUNDLES, bundle)
    name = os.path.basename(os.path.normpath(bundle))
    if not os.path.isfile(os.path.join(bundle, "configs", "metadata.json")):
        raise TskdError(f"'{bundle}' is not a bundle (no configs/metadata.json). Give a folder under bundles/.")
    if not os.path.isfile(weights):
        raise TskdError(f"weights file '{weights}' not found. Train the bundle first (configs/train.json writes "
                        "models/model.pt) and pass that file with --weights.")
    metrics = metrics or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(weights))), "eval", "metrics.json")
    if not os.path.isfile(metrics):
        raise TskdError(f"no evaluation of these weights at '{metrics}' (eval_metrics is filled from it). Run the "
                        "bundle's evaluate.json with the same --bundle_root first, or pass --metrics.")
    with open(os.path.join(bundle, "configs", "metadata.json")) as f:
        meta = json.load(f)
    shape = meta["network_data_format"]["inputs"]["image"]["spatial_shape"]
    if not all(isinstance(s, int) for s in shape):
        raise TskdError(f"'{name}' reads its classes, size and channels from the datalist at run time, so its "
                        "metadata has no fixed input shape; a zoo bundle needs one. Generate a dataset entry in "
                        "bundles/datasets.json for your data (python scripts/make_bundles.py) and export that bundle.")

    configs = {}
    for file in sorted(os.listdir(os.path.join(bundle, "configs"))):
        if file.endswith(".json") and file != "metadata.json":
            with open(os.path.join(bundle, "configs", file)) as f:
                configs[file] = json.load(f)

    with atomic_folder(os.path.join(out, name)) as tmp:
        for rel in ("LICENSE", "docs", os.path.join("configs", "logging.conf")):
            src = os.path.join(bundle, rel)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(tmp, rel))
            elif os.path.isfile(src):
                os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
                shutil.copy(src, os.path.join(tmp, rel))
        for file, config in configs.items():
            with open(os.path.join(tmp, "configs", file), "w") as f:
                json.dump(_rewrite_config(config), f, indent=4)
                f.write("\n")
        copied = copy_code(configs, os.path.join(tmp, "scripts"))

        os.makedirs(os.path.join(tmp, "models"))
        shutil.copy(weights, os.path.join(tmp, "models", "model.pt"))
        merged = os.path.join(os.path.dirname(weights), "model_merged.pt")
        if name.endswith("_teacher") and os.path.isfile(merged):
            shutil.copy(merged, os.path.join(tmp, "models", "model_merged.pt"))
        large = []
        for file in sorted(os.listdir(os.path.join(tmp, "models"))):
            path = os.path.join(tmp, "models", file)
            if os.path.getsize(path) > LARGE_FILE_MB * 1e6:
                large.append(f'  - path: "models/{file}"\n    url: ""  # fill in: where the file is uploaded\n'
                             f'    hash_val: "{file_sha256(path)}"\n    hash_type: "sha256"\n')
        with open(os.path.join(tmp, "large_files.yml"), "w") as f:
            f.write(f"# Files over {LARGE_FILE_MB} MB are not committed to the model zoo: upload each and fill in its url.\n"
                    "large_files:\n" + "".join(large) if large else "large_files: []\n")

        import monai
        import numpy
        import torch

        version = version or meta["version"]
        today = datetime.date.today().isoformat()
        meta.update({
            "version": version,
            "changelog": {version: changelog or f"exported {today} from tskd {_git_commit()} "
                                               f"(weights: {os.path.basename(weights)})",
                          **{k: v for k, v in meta["changelog"].items() if k != version}},
            "monai_version": monai.__version__,
            "pytorch_version": torch.__version__.split("+")[0],
            "numpy_version": numpy.__version__,
            "required_packages_version": third_party_versions(os.path.join(tmp, "scripts")),
            "eval_metrics": eval_metrics(metrics),
            "description": meta["description"].replace("components from the tskd `common` package",
                                                        "code in scripts/ (from the tskd `common` package)"),
        })
        with open(os.path.join(tmp, "configs", "metadata.json"), "w") as f:
            json.dump(meta, f, indent=4)
            f.write("\n")
    print(f"wrote {os.path.join(out, name)}: {len(copied)} modules in scripts/, "
          f"{len(meta['required_packages_version'])} required packages, {len(large)} large file(s)")
    return os.path.join(out, name)

