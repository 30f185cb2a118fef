"""Small Ignite handlers the bundles need: stop on a NaN loss with advice, and resume exactly: only a
checkpoint of the same settings, skipping unreadable ones, with every random generator restored."""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import logging
import math
import os
import random
import re

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver, from_engine
from monai.transforms import Randomizable

from common.data.io import file_sha256
from common.engines.distributed import barrier, is_rank0
from common.errors import TskdError, first_line
from common.settings import as_flag

__all__ = ["NaNLossGuard", "latest_checkpoint", "ResumableCheckpoint", "RunState", "describe_files", "WeightsLoader"]


class NaNLossGuard:
    """Raise one clear error when the training loss becomes NaN or infinite.

    The last epoch checkpoint stays on disk, so the run can be resumed after the fix.

    Args:
        checkpoint_dir: where the epoch checkpoints are written (named in the message).
    """

    def __init__(self, checkpoint_dir: str = "") -> None:
        self.checkpoint_dir = checkpoint_dir

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        # MONAI engines decollate the output into one dict per item, each holding the batch loss.
        loss = from_engine(["loss"], first=True)(engine.state.output)
        value = float(loss.detach().float().mean()) if hasattr(loss, "detach") else float(loss)
        if math.isfinite(value):
            return
        where = f" The last good epoch checkpoint is in '{self.checkpoint_dir}' (training resumes from it)." \
            if self.checkpoint_dir else ""
        raise TskdError(f"the training loss became {value} at epoch {engine.state.epoch}, iteration "
                        f"{engine.state.iteration}. Lower learning_rate, check the images for NaN/constant "
                        f"values, or disable AMP.{where}")


def describe_files(value) -> str:
    """A digest of what a run reads: a datalist's items (each file's path, size and modification time) or
    one checkpoint file (its sha256). Empty input gives ``""``. Part of a run's settings for resuming."""
    if not value:
        return ""
    h = hashlib.sha256()
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        return file_sha256(path) if os.path.isfile(path) else f"missing:{path}"
    for item in value:
        for key in sorted(item):
            v = item[key]
            h.update(f"{key}={v}".encode())
            if isinstance(v, str) and os.path.isfile(v):
                st = os.stat(v)
                h.update(f":{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def _randomizables(root, seen: set[int] | None = None) -> list[Randomizable]:
    """Every MONAI ``Randomizable`` reachable from ``root`` (a Compose, a list, a transform), in a fixed order."""
    seen = set() if seen is None else seen
    if root is None or id(root) in seen or isinstance(root, (str, bytes, int, float, torch.Tensor, np.ndarray)):
        return []
    seen.add(id(root))
    found = [root] if isinstance(root, Randomizable) else []
    children = root if isinstance(root, (list, tuple)) else list(vars(root).values()) if hasattr(root, "__dict__") else []
    for child in children:
        if isinstance(child, (list, tuple)) or hasattr(child, "__dict__"):
            found += _randomizables(child, seen)
    return found


class RunState:
    """The run's settings and every random number generator's state, saved in each epoch checkpoint.

    Restoring the generators (torch, numpy, python, and each random transform's own generator) makes a
    resumed run continue exactly as the uninterrupted one would have.

    Args:
        settings: what defines the run (a JSON-able dict); a checkpoint of other settings is not resumed.
        random_transforms: the training preprocessing, whose random transforms' states are saved.
    """

    def __init__(self, settings: dict | None = None, random_transforms=None) -> None:
        self.settings = json.dumps(settings or {}, sort_keys=True, default=str)
        self.transforms = _randomizables(random_transforms)

    def state_dict(self) -> dict:
        state = {"settings": self.settings, "torch": torch.get_rng_state(), "python": repr(random.getstate()),
                 "numpy": _numpy_state(np.random.get_state()), "transforms": [_numpy_state(t.R.get_state())
                                                                          for t in self.transforms]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(ast.literal_eval(state["python"]))
        np.random.set_state(_from_numpy_state(state["numpy"]))
        for t, s in zip(self.transforms, state["transforms"]):
            t.R.set_state(_from_numpy_state(s))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

    def add_settings(self, **settings) -> None:
        """Add settings known only once the trainer exists (its epoch count)."""
        self.settings = json.dumps({**json.loads(self.settings), **settings}, sort_keys=True, default=str)

    def differences(self, saved: str) -> list[str]:
        """Names of the settings that differ from ``saved`` (a ``settings`` string from a checkpoint)."""
        old, new = json.loads(saved or "{}"), json.loads(self.settings)
        return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _numpy_state(state: tuple) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, torch.from_numpy(np.asarray(keys, np.int64)), int(pos), int(has_gauss), float(cached)]


def _from_numpy_state(state: list) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, np.asarray(keys.numpy(), np.uint32), pos, has_gauss, cached


def _finished(checkpoint: dict) -> bool:
    """Whether an epoch checkpoint's trainer had done all the epochs it was asked for."""
    trainer = checkpoint.get("trainer", {})
    planned = trainer.get("max_epochs", 0) * trainer.get("epoch_length", 0)
    return bool(planned) and trainer.get("iteration", 0) >= planned


def _loadable(path: str) -> dict | None:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated by a kill or a full disk, or not a checkpoint at all
        logging.getLogger(__name__).warning(f"skipping the unreadable checkpoint {path} ({first_line(e)})")
        return None
    return checkpoint if isinstance(checkpoint, dict) else None


def _latest_readable(folder: str, pattern: str) -> tuple[str, dict] | tuple[None, None]:
    found = []
    for path in glob.glob(os.path.join(folder, pattern)):
        m = re.search(r"epoch=(\d+)", os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    for _, path in sorted(found, reverse=True):
        checkpoint = _loadable(path)
        if checkpoint is not None:
            return path, checkpoint
    return None, None


def latest_checkpoint(folder: str, pattern: str = "checkpoint*epoch=*.pt") -> str | None:
    """The readable epoch checkpoint with the highest epoch number in ``folder``, or None; unreadable ones
    (e.g. truncated by a crash) are skipped with a warning."""
    return _latest_readable(folder, pattern)[0]


class ResumableCheckpoint:
    """Save the whole training state every epoch and resume from the latest one on the next run.

    The trainer itself joins ``save_dict`` when the handler is attached (a config cannot refer to the
    trainer from inside the trainer's own handler list), and so does a ``RunState``: the run's settings and
    the random generators. A checkpoint is resumed only when its settings equal this run's; otherwise the
    run stops and says how to start over. Checkpoints are written to a temporary file and renamed (ignite's
    atomic ``DiskSaver``), and the previous one is kept, so a crash while writing never blocks a resume.
    Under torchrun every rank resumes from the same checkpoint (so the replicas and their epoch counters
    agree) and only rank 0 writes or deletes checkpoints.

    Args:
        save_dir: checkpoint folder.
        save_dict: objects with ``state_dict``/``load_state_dict`` (model, optimizer, lr scheduler).
        settings: what defines the run (hyperparameters, digests of the data and upstream checkpoints).
        random_transforms: the training preprocessing (its random transforms' generators are saved).
        resume: load the latest ``checkpoint_epoch=N.pt`` in ``save_dir`` before training, if any; when
            False, older epoch checkpoints in ``save_dir`` are deleted so that no later run resumes from them.
        save_interval: epochs between checkpoints.
    """

    def __init__(self, save_dir: str, save_dict: dict, settings: dict | None = None, random_transforms=None,
                 resume: bool | str = True, save_interval: int = 1) -> None:
        self.save_dir = save_dir
        self.save_dict = save_dict
        self.run_state = RunState(settings, random_transforms)
        # ``--resume false`` reaches a config as the string "false".
        self.resume = as_flag(resume, "resume")
        self.save_interval = save_interval

    def attach(self, engine: Engine) -> None:
        objects = {**self.save_dict, "trainer": engine, "run": self.run_state}
        path, checkpoint = _latest_readable(self.save_dir, "checkpoint*epoch=*.pt") if self.resume else (None, None)
        # The epoch count is part of the run: ignite would otherwise restore the old count over the new one.
        self.run_state.add_settings(max_epochs=engine.state.max_epochs)
        finished = bool(path) and _finished(checkpoint)
        if finished:
            # Re-running a finished run (MONAI Label's /train, or the same command again) trains a new one
            # rather than resuming a run with nothing left to do; the finished weights stay in the bundle's
            # model file until the new run writes its own.
            logging.getLogger(__name__).warning(
                f"'{path}' ends a finished run; starting a new run of {engine.state.max_epochs} epochs")
            path = None
        if (finished or not self.resume) and is_rank0():
            # A fresh start: an older run's epoch files must not be resumed from later.
            for old in glob.glob(os.path.join(self.save_dir, "checkpoint*epoch=*.pt")):
                os.remove(old)
        barrier()
        if path:
            saved = checkpoint.get("run", {}).get("settings", "")
            differ = self.run_state.differences(saved)
            if differ:
                raise TskdError(f"'{path}' was written by a run with other settings ({', '.join(differ)} differ); "
                                "resuming it would mix two runs. Start over with --resume false (its epoch checkpoints "
                                "are deleted), or choose another --bundle_root.")
            logging.getLogger(__name__).info(f"resuming from {path}")
            CheckpointLoader(load_path=path, load_dict=objects, map_location="cpu").attach(engine)
        if is_rank0():
            CheckpointSaver(save_dir=self.save_dir, save_dict=objects, file_prefix="", epoch_level=True,
                            save_interval=self.save_interval, n_saved=2).attach(engine)


class WeightsLoader:
    """Load trained weights into a model when an evaluation or inference run starts: ``weights_only``, and
    one ``CheckpointError`` naming the file when it is missing, unreadable, or does not fit the model.

    Args:
        load_path: the weights file (a bundle's ``models/model.pt``).
        model: an ``nn.Module``, or an object with ``state_dict``/``load_state_dict(state, path)`` (the
            teacher's ``TrainableState``).
        hint: how to get a fitting file, appended to errors.
    """

    def __init__(self, load_path: str, model, hint: str = "") -> None:
        self.load_path, self.model, self.hint = load_path, model, hint

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        from common.models.checkpoints import check_state_dict, load_state_file

        state = load_state_file(self.load_path, "trained model", self.hint)
        if isinstance(self.model, torch.nn.Module):
            check_state_dict(state, self.model.state_dict(), self.load_path, "trained model", self.hint)
            self.model.load_state_dict(state)
        else:
            self.model.load_state_dict(state, self.load_path)
        logging.getLogger(__name__).info(f"loaded {self.load_path}")
