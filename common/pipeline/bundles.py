"""Running a stage's MONAI bundle from Python: in process through MONAI's bundle workflow API, with the
overrides as a dict, and reading a bundle's values through its declared properties.

``run_bundle`` is what ``python -m monai.bundle run --config_file ... --key value`` does (``create_workflow``,
``run``, ``finalize``), without starting a Python process and importing torch, MONAI and the package again for
every stage. An error of ours raised while MONAI builds a component reaches the caller as that ``TskdError``
(one line), not wrapped in MONAI's instantiate traceback (``TSKD_TRACEBACK=1`` keeps the chain).
``isolate=True`` (or ``TSKD_STAGE_PROCESS=1``) runs the stage in its own process instead, as the command line
does: a crash of the stage (killed for memory, a segfault in a native library) then cannot take the caller down.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import warnings

from common.errors import TskdError, find_tskd_error

__all__ = ["BUNDLES", "PROPERTIES", "bundle_folder", "bundle_properties", "run_bundle", "StageFailed"]

_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLES = os.environ.get("TSKD_BUNDLES", os.path.join(_REPO, "bundles"))
# tskd's bundle contract: the values the pipeline reads from or sets in a stage's bundle, by property name.
PROPERTIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties.json")


class StageFailed(TskdError):
    """A stage run in its own process exited with an error (its output above says why)."""


def bundle_folder(dataset: str, stage: str) -> str:
    """``bundles/<dataset>_<stage>/configs``, or one error naming the missing bundle."""
    folder = os.path.join(BUNDLES, f"{dataset}_{stage}", "configs")
    if not os.path.isdir(folder):
        raise TskdError(f"no bundle '{dataset}_{stage}' in {BUNDLES}: --dataset must name a dataset whose bundles "
                        "exist (scripts/make_bundles.py writes them; set TSKD_BUNDLES for another bundles folder).")
    return folder


def _files(folder: str, configs: tuple[str, ...]) -> str | list[str]:
    files = [os.path.join(folder, f"{name}.json") for name in configs]
    return files[0] if len(files) == 1 else files


def _workflow_type(configs: tuple[str, ...]) -> str:
    return "infer" if configs[-1] in ("inference", "evaluate") else "train"


def run_bundle(dataset: str, stage: str, configs: tuple[str, ...], root: str, overrides: dict,
               isolate: bool = False) -> None:
    """Run ``configs`` (merged in order, e.g. ``("train", "evaluate")``) of a stage's bundle with ``bundle_root``
    ``root`` and ``overrides``."""
    folder = bundle_folder(dataset, stage)
    meta = os.path.join(folder, "metadata.json")
    files = _files(folder, configs)
    overrides = {**overrides, "bundle_root": root}
    if isolate or os.environ.get("TSKD_STAGE_PROCESS", "").lower() in ("1", "true"):
        _run_in_process_of_its_own(files, meta, overrides)
        return
    saved_path = list(sys.path)
    try:
        from monai.bundle import ConfigWorkflow, create_workflow

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="parsing config_file")  # our own bundles
            workflow = create_workflow(workflow_name=ConfigWorkflow, config_file=files, meta_file=meta,
                                       workflow_type=_workflow_type(configs), properties_path=PROPERTIES, **overrides)
        workflow.run()
        workflow.finalize()
    except Exception as e:
        error = None if os.environ.get("TSKD_TRACEBACK") else find_tskd_error(e)
        if error is None:
            raise
        raise error.with_traceback(None) from None
    finally:
        sys.path[:] = saved_path  # ConfigWorkflow.run puts the bundle folder on the path
        workflow = None
        gc.collect()


def _run_in_process_of_its_own(files: str | list[str], meta: str, overrides: dict) -> None:
    args = ["--config_file", str(files), "--meta_file", meta, *(f"--{k}={v}" for k, v in overrides.items())]
    result = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args])
    if result.returncode != 0:
        raise StageFailed(f"stage failed (exit {result.returncode}): python -m monai.bundle run {' '.join(args)}")


def bundle_properties(dataset: str, stage: str, overrides: dict | None = None, config: str = "train"):
    """A stage's bundle as a MONAI workflow whose properties (``properties.json``: ``image_size``,
    ``in_channels``, ``num_classes``, ``lora_rank``, ...) can be read, e.g. ``bundle_properties("demo",
    "student").image_size``. Nothing is built or run: only the config is parsed."""
    from monai.bundle import ConfigWorkflow

    folder = bundle_folder(dataset, stage)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="parsing config_file")
        workflow = ConfigWorkflow(config_file=_files(folder, (config,)), meta_file=os.path.join(folder, "metadata.json"),
                                  workflow_type=_workflow_type((config,)), properties_path=PROPERTIES,
                                  init_id="tskd_read_properties", logging_file=os.path.join(folder, "logging.conf"),
                                  **(overrides or {}))
    workflow.initialize()  # parses the config; ``init_id`` names no expression, so nothing runs
    return workflow
