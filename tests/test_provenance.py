"""One provenance mechanism (common.provenance): keyed artefacts that know whether they are fresh, atomic
records, and folder locks that keep two real processes from writing the same run folder or building the same
shared stage at once."""

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

from common.provenance import Artifact, FolderLock, LockedError, content_key, read_json, write_json

HOLD = """
import sys, time
from common.provenance import FolderLock
with FolderLock(sys.argv[1], what="the run folder"):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""
# Builds an artefact unless it is fresh; appends to a log around the (slow) build, so interleaving would show.
BUILD = """
import os, sys, time
from common.provenance import Artifact
folder, log = sys.argv[1], sys.argv[2]
artifact = Artifact(folder, {"size": 3}, outputs=("data.txt",))
with artifact.lock():
    if not artifact.fresh():
        open(log, "a").write(f"start {os.getpid()}\\n")
        os.makedirs(folder, exist_ok=True)
        for i in range(3):
            open(os.path.join(folder, "data.txt"), "a").write(f"{i}\\n")
            time.sleep(0.5)
        artifact.finish()
        open(log, "a").write(f"end {os.getpid()}\\n")
"""


def _holder(folder: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, folder, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_a_second_run_into_a_held_folder_is_refused_with_one_line_naming_the_holder(tmp_path, demo_small):
    out = str(tmp_path / "run")
    holder = _holder(out, 60)
    try:
        result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "run_pipeline.py"), "--profile", "smoke",
                                 "--data_dir", demo_small, "--out", out], capture_output=True, text=True, timeout=300)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith("run_pipeline: the run folder") and f"process {holder.pid}" in lines[0]
        assert "===" not in result.stdout  # refused before any stage
        assert not os.path.exists(os.path.join(out, "teacher"))
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (even killed): the lock went with it.
    with FolderLock(out):
        pass


def test_two_processes_building_one_artefact_build_it_once_and_never_interleave(tmp_path):
    folder, log = str(tmp_path / "shared"), str(tmp_path / "log.txt")
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, folder, log]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    events = open(log).read().split()
    assert events[0] == "start" and events[2] == "end" and len(events) == 4  # one build, start then end
    assert open(os.path.join(folder, "data.txt")).read() == "0\n1\n2\n"
    assert Artifact(folder, {"size": 3}, outputs=("data.txt",)).fresh()


def test_an_artefact_is_fresh_only_for_its_inputs_and_the_outputs_it_recorded(tmp_path):
    folder = tmp_path / "stage"
    artifact = Artifact(str(folder), {"lr": 0.1, "upstream": "abc"}, outputs=("models/model.pt",))
    assert not artifact.fresh() and not artifact.resumable()
    artifact.begin()
    assert artifact.resumable() and not (folder / "done.json").exists()
    (folder / "models").mkdir()
    (folder / "models" / "model.pt").write_bytes(b"weights")
    record = artifact.finish(seconds=3)
    assert artifact.fresh() and record["seconds"] == 3 and not artifact.resumable()
    key = artifact.output_key()
    assert not Artifact(str(folder), {"lr": 0.2, "upstream": "abc"}, outputs=("models/model.pt",)).fresh()
    (folder / "models" / "model.pt").write_bytes(b"other weights")
    assert not artifact.fresh() and artifact.changed_since_finished()
    artifact.finish()
    assert artifact.output_key() != key  # what is made from it follows its content
    assert content_key({"a": 1, "b": 2}) == content_key({"b": 2, "a": 1})


def test_records_are_written_whole_and_a_lock_is_reentrant_in_one_process(tmp_path):
    path = str(tmp_path / "record.json")
    write_json(path, {"status": "done"})
    assert read_json(path) == {"status": "done"} and os.listdir(tmp_path) == ["record.json"]
    (tmp_path / "broken.json").write_text('{"status": ')
    assert read_json(str(tmp_path / "broken.json")) == {}
    folder = str(tmp_path / "grid")
    with FolderLock(folder):
        with FolderLock(folder):  # a grid holding its folder runs pipelines into it
            pass
        info = json.load(open(os.path.join(folder, ".tskd.lock")))
        assert info["pid"] == os.getpid()
    holder = _holder(folder, 2)
    try:
        with pytest.raises(LockedError, match=f"process {holder.pid}"):
            with FolderLock(folder):
                pass
        start = time.time()
        with FolderLock(folder, wait=True):  # waits for the holder instead
            assert time.time() - start > 0.5
    finally:
        holder.kill()
        holder.wait()


def test_a_checkpoint_write_that_fills_the_disk_is_one_error_and_leaves_no_half_file(tmp_path):
    """A real failed write (its temporary file points at /dev/full, which answers every write with ENOSPC):
    torch's own error is turned into one line naming the file, the free space and the fix; no file is left."""
    import torch

    from common.errors import TskdError, find_tskd_error
    from common.provenance import save_torch

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    path = str(tmp_path / "model.pt")
    save_torch({"w": torch.ones(3)}, path)
    os.symlink("/dev/full", f"{path}.{os.getpid()}.tmp")
    with pytest.raises(TskdError) as failed:
        save_torch({"w": torch.zeros(100_000)}, path)
    message = failed.value.message
    assert message.startswith(f"could not write '{path}'") and "MiB free on that disk" in message, message
    assert "--out" in message and sorted(os.listdir(tmp_path)) == ["model.pt"]
    assert torch.load(path, weights_only=True)["w"].tolist() == [1.0, 1.0, 1.0]  # the old file, whole
    # The same torch error raised elsewhere (e.g. MONAI's checkpoint saver) is recognised on its way out.
    try:
        torch.save({"w": torch.zeros(100_000)}, "/dev/full")
    except RuntimeError as e:
        assert find_tskd_error(e).message.startswith("could not write a file (")
    else:
        pytest.fail("writing to /dev/full did not fail")


def test_a_stage_trains_again_when_its_bundle_recipe_changes(demo_small, tmp_path, monkeypatch, capfd):
    """The recipe (the bundle's train.json) is one of a stage's inputs: the same overrides skip a trained stage,
    a changed default in the bundle trains it again instead of reusing weights of the old recipe."""
    import shutil

    from common.pipeline import stages

    configs = tmp_path / "bundle" / "configs"
    shutil.copytree(stages.bundle_folder("demo", "student"), configs)
    monkeypatch.setattr(stages, "bundle_folder", lambda dataset, stage: str(configs))
    root, overrides = str(tmp_path / "student"), {"dataset_dir": demo_small, "image_size": 64, "batch_size": 2,
                                                  "steps": 1, "epoch_length": 1}
    first = stages.train_bundle("demo", "student", root, overrides)
    assert stages.train_bundle("demo", "student", root, overrides) == first
    assert "already trained with these settings" in capfd.readouterr().out
    recipe = json.load(open(configs / "train.json"))
    recipe["learning_rate"] = recipe["learning_rate"] / 2
    json.dump(recipe, open(configs / "train.json", "w"))
    assert stages.train_bundle("demo", "student", root, overrides) != first
    assert "already trained" not in capfd.readouterr().out


def test_the_cpu_is_named_with_its_family_and_model_where_cpuinfo_gives_them(tmp_path):
    """Two CPU generations can share a model name ("AMD EPYC"); their results differ, so the numbers go with it."""
    from common.provenance import cpu_name

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
                    "model name\t: AMD  EPYC\n\nprocessor\t: 1\ncpu family\t: 25\nmodel name\t: other\n")
    assert cpu_name(str(info)) == "AMD EPYC (family 26, model 2)"  # the first processor's block only
    info.write_text("processor\t: 0\nmodel name\t: Some ARM core\n")
    assert cpu_name(str(info)) == "Some ARM core"
    assert cpu_name(str(tmp_path / "absent")) not in ("", "AMD EPYC (family 26, model 2)")


def test_the_same_weights_saved_twice_make_the_same_file_digest(tmp_path):
    """done.json's sha256 of a model (the grid's `teacher_sha256`) must name the weights: two saves of equal
    weights, by two processes, give the same bytes (torch.save to a path names its inner folder after the path's
    temporary name, which holds the process id)."""
    import torch

    from common.provenance import file_sha256, save_torch

    weights = {"w": torch.arange(6.0).reshape(2, 3)}
    code = ("import sys, torch; from common.provenance import save_torch; "
            "save_torch({'w': torch.arange(6.0).reshape(2, 3)}, sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "b.pt")], check=True, cwd=ROOT)
    save_torch(weights, str(tmp_path / "a.pt"))
    assert file_sha256(str(tmp_path / "a.pt")) == file_sha256(str(tmp_path / "b.pt"))
    save_torch({"w": weights["w"] + 1}, str(tmp_path / "c.pt"))
    assert file_sha256(str(tmp_path / "c.pt")) != file_sha256(str(tmp_path / "a.pt"))
