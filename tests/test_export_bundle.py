"""tskd-export (scripts/export_bundle.py): a zoo bundle that runs outside this repository, without tskd importable, and
predicts what the bundle predicts here; its metadata passes the zoo schema and verify_net_in_out."""

import json
import os
import sys

import numpy as np
import pytest

from conftest import ROOT, SHARED, run_ok, skip_or_fail

SCHEMA = os.path.join(SHARED, "zoo", "meta_schema_20240725.json")
# Runs a monai.bundle command as a zoo user would: no editable tskd install, no repository on the path.
ISOLATED = """
import importlib.util, os, runpy, sys
repo = os.path.realpath(sys.argv.pop(1))
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != repo]
if importlib.util.find_spec("common") is not None:
    sys.exit("tskd's common package is still importable")
sys.path.insert(0, os.getcwd())  # what `python -m` gives a command run from the bundle folder
sys.argv = ["monai.bundle", *sys.argv[1:]]
runpy.run_module("monai.bundle", run_name="__main__")
"""


def _export_module():
    from common.pipeline import export

    return export


def _isolated(bundle_dir, *args):
    return run_ok([sys.executable, "-c", ISOLATED, ROOT, *args], cwd=str(bundle_dir))


@pytest.fixture(scope="module")
def exported(trained_demo_student, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    weights = os.path.join(trained_demo_student["run"], "models", "model.pt")
    # tskd-export (common.pipeline.cli.export_main) calls exactly this.
    _export_module().export_bundle("demo_student", weights, str(out), version="0.2.0", changelog="test export")
    return out / "demo_student"


def test_exported_bundle_is_self_contained(exported, trained_demo_student):
    from common.data.io import file_sha256

    files = {os.path.relpath(os.path.join(d, f), exported) for d, _, fs in os.walk(exported) for f in fs}
    for rel in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/evaluate.json",
                "configs/logging.conf", "docs/README.md", "LICENSE", "large_files.yml", "models/model.pt",
                "scripts/__init__.py", "scripts/common/models/vit_fpn.py"):
        assert rel in files, rel
    # Only what the student needs: no diffusion or teacher code.
    assert not any(f.startswith(("scripts/common/synth", "scripts/common/models/sam_teacher")) for f in files)
    for rel in (f for f in files if f.endswith(".json") or f.endswith(".py")):
        text = open(exported / rel).read()
        assert '"common.' not in text and "$common." not in text and "from common" not in text, rel

    meta = json.load(open(exported / "configs" / "metadata.json"))
    report = json.load(open(os.path.join(trained_demo_student["run"], "eval", "metrics.json")))
    assert meta["version"] == "0.2.0" and meta["changelog"]["0.2.0"] == "test export"
    assert meta["eval_metrics"]["mean_dice"] == report["mean_dice"]
    assert meta["eval_metrics"]["grey_matter_dice"] == report["per_class"]["grey_matter"]["dice"]
    packages = meta["required_packages_version"]
    import timm

    assert packages["timm"] == timm.__version__ and "peft" not in packages and "diffusers" not in packages

    weights = exported / "models" / "model.pt"
    large = open(exported / "large_files.yml").read()
    if weights.stat().st_size > 25e6:
        assert f'hash_val: "{file_sha256(str(weights))}"' in large and 'path: "models/model.pt"' in large
    else:
        assert "models/model.pt" not in large


def test_exported_bundle_passes_the_zoo_checks(exported):
    if not os.path.isfile(SCHEMA):
        skip_or_fail(f"model-zoo schema copy not found at {SCHEMA}")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(exported / "configs" / "metadata.json"), filepath=SCHEMA)  # raises if invalid
    log = _isolated(exported, "verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                    "--config_file", "configs/inference.json", "--bundle_root", ".")
    assert "data shape of network is verified with no error" in log.stdout + log.stderr


def test_exported_bundle_predicts_as_the_repository_bundle(exported, trained_demo_student, tmp_path):
    import nibabel as nib

    data = trained_demo_student["data"]
    _isolated(exported, "run", "--config_file", "configs/inference.json", "--bundle_root", ".", "--dataset_dir", data)
    run_ok([sys.executable, "-m", "monai.bundle", "run", "--config_file",
            os.path.join(ROOT, "bundles", "demo_student", "configs", "inference.json"), "--bundle_root",
            trained_demo_student["run"], "--dataset_dir", data, "--output_dir", str(tmp_path / "here")], cwd=ROOT)
    here = sorted(os.listdir(tmp_path / "here"))
    there = sorted(os.listdir(exported / "eval" / "predictions"))
    assert here == there and len(here) == len(json.load(open(os.path.join(data, "datalist.json")))["test"])
    for name in here:
        a = np.asarray(nib.load(str(tmp_path / "here" / name)).dataobj)
        b = np.asarray(nib.load(str(exported / "eval" / "predictions" / name)).dataobj)
        assert a.shape == (128, 128) and np.array_equal(a, b), name


def test_export_refuses_what_it_cannot_ship(tmp_path, trained_demo_student):
    from common.errors import TskdError

    export = _export_module()
    with pytest.raises(TskdError, match="not found. Train the bundle first"):
        export.export_bundle("demo_student", str(tmp_path / "missing.pt"), str(tmp_path / "out"))
    lone = tmp_path / "lone.pt"
    lone.write_bytes(open(os.path.join(trained_demo_student["run"], "models", "model.pt"), "rb").read())
    with pytest.raises(TskdError, match="no evaluation of these weights"):
        export.export_bundle("demo_student", str(lone), str(tmp_path / "out"))
    with pytest.raises(TskdError, match="no fixed input shape"):
        export.export_bundle("folder_student", os.path.join(trained_demo_student["run"], "models", "model.pt"),
                             str(tmp_path / "out"))
