"""A trained demo student served by a real MONAI Label server (monaibundle app, 127.0.0.1, offline):
/info/, /infer equal to the bundle's own inference, and /train that trains (twice: never a silent resume)."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, monailabel_server, run_ok, skip_or_fail

BUNDLE = "demo_student"


def _state(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, trained_demo_student):
    """The monaibundle app (copied from the monailabel wheel) serving a 1-epoch demo student on 128² MRI."""
    import importlib.util

    if importlib.util.find_spec("monailabel") is None:
        skip_or_fail("monailabel is not installed (pip install -r requirements.txt)")

    work = tmp_path_factory.mktemp("monailabel")
    data = Path(trained_demo_student["data"])
    run_ok([sys.executable, "-m", "monailabel.main", "apps", "--download", "--name", "monaibundle",
            "--output", str(work / "apps")], cwd=work)
    bundle = work / "apps" / "monaibundle" / "model" / BUNDLE
    shutil.copytree(os.path.join(ROOT, "bundles", BUNDLE), bundle)
    # The trained run's folder as MONAI Label finds it in the bundle: weights and the finished epoch checkpoint.
    shutil.copytree(os.path.join(trained_demo_student["run"], "models"), bundle / "models")

    # The datastore: the labelled images (labels/final/<same name>) and the unlabelled test images.
    studies = work / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    datalist = json.load(open(data / "datalist.json"))
    for item in datalist["training"] + datalist["validation"]:
        shutil.copy(data / item["image"], studies)
        shutil.copy(data / item["label"], studies / "labels" / "final" / os.path.basename(item["image"]))
    for item in datalist["test"]:
        shutil.copy(data / item["image"], studies)

    # Offline: no model-zoo lookup on GitHub, no SAM2 download.
    with monailabel_server(str(work / "apps" / "monaibundle"), str(studies),
                           ["models", BUNDLE, "zoo_source", "github", "sam2", "false"], str(work)) as url:
        yield {"url": url, "bundle": bundle, "work": work, "test": [data / t["image"] for t in datalist["test"]]}


def test_monailabel_serves_and_retrains_the_student(server):
    import nibabel as nib
    import requests

    url, bundle, work = server["url"], server["bundle"], server["work"]
    info = requests.get(f"{url}/info/", timeout=30).json()
    model = info["models"][BUNDLE]
    assert model["dimension"] == 2 and model["labels"] == {"grey_matter": 1, "white_matter": 2}
    assert BUNDLE in info["trainers"]

    image = server["test"][0]
    image_id = os.path.basename(str(image)).replace(".nii.gz", "")
    answer = requests.post(f"{url}/infer/{BUNDLE}", params={"image": image_id, "output": "image"},
                           files={"params": (None, json.dumps({"device": "cpu"}))}, timeout=300)
    assert answer.status_code == 200, answer.text[:2000]
    (work / "served.nii.gz").write_bytes(answer.content)
    served = np.asarray(nib.load(str(work / "served.nii.gz")).dataobj)

    # The bundle's own inference on the same image.
    run_ok([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
          "--bundle_root", str(bundle), "--datalist", str([{"image": str(image)}]),
          "--output_dir", str(work / "own")], cwd=work)
    own = np.asarray(nib.load(str(work / "own" / f"{image_id}_seg.nii.gz")).dataobj)
    assert served.shape == own.shape == (128, 128), (served.shape, own.shape)
    assert served.dtype == np.uint8 and set(np.unique(served)) <= {0, 1, 2}
    assert np.array_equal(served, own)

    # Two /train requests: each trains (the second is not a resume of the first's finished run).
    for epochs in (1, 2):
        before = _state(bundle / "models" / "model.pt")
        answer = requests.post(f"{url}/train/{BUNDLE}", params={"run_sync": "true"}, timeout=600,
                               json={"max_epochs": epochs, "device": "cpu", "val_split": 0.2, "multi_gpu": False,
                                     "tracking": "None"})
        assert answer.status_code == 200, answer.text[:2000]
        after = _state(bundle / "models" / "model.pt")
        changed = [k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy())]
        assert changed, f"/train with max_epochs={epochs} left models/model.pt unchanged"
    log = (work / "server.log").read_text()
    assert "ends a finished run; starting a new run of 2 epochs" in log
    assert "Epoch[2] Complete" in log
