"""Small Ignite handlers the bundles need: stop on a NaN loss with advice, find the checkpoint to resume."""

from __future__ import annotations

import glob
import logging
import math
import os
import re

from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader, CheckpointSaver, from_engine

from common.errors import TskdError

__all__ = ["NaNLossGuard", "latest_checkpoint", "ResumableCheckpoint"]


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


def latest_checkpoint(folder: str, pattern: str = "checkpoint*epoch=*.pt") -> str | None:
    """The epoch checkpoint with the highest epoch number in ``folder``, or None."""
    found = []
    for path in glob.glob(os.path.join(folder, pattern)):
        m = re.search(r"epoch=(\d+)", os.path.basename(path))
        if m:
            found.append((int(m.group(1)), path))
    if not found:
        return None
    path = max(found)[1]
    logging.getLogger(__name__).info(f"resuming from {path}")
    return path


class ResumableCheckpoint:
    """Save the whole training state every epoch and resume from the latest one on the next run.

    The trainer itself joins ``save_dict`` when the handler is attached (a config cannot refer to the
    trainer from inside the trainer's own handler list).

    Args:
        save_dir: checkpoint folder.
        save_dict: objects with ``state_dict``/``load_state_dict`` (model, optimizer, lr scheduler).
        resume: load the latest ``checkpoint_epoch=N.pt`` in ``save_dir`` before training, if any; when
            False, older epoch checkpoints in ``save_dir`` are deleted so that no later run resumes from them.
        save_interval: epochs between checkpoints.
    """

    def __init__(self, save_dir: str, save_dict: dict, resume: bool | str = True, save_interval: int = 1) -> None:
        self.save_dir = save_dir
        self.save_dict = save_dict
        # ``--resume false`` reaches a config as the string "false".
        self.resume = resume if isinstance(resume, bool) else str(resume).strip().lower() not in ("false", "0", "no", "")
        self.save_interval = save_interval

    def attach(self, engine: Engine) -> None:
        objects = {**self.save_dict, "trainer": engine}
        if not self.resume:  # a fresh start: an older run's epoch files must not be resumed from later
            for old in glob.glob(os.path.join(self.save_dir, "checkpoint*epoch=*.pt")):
                os.remove(old)
        path = latest_checkpoint(self.save_dir) if self.resume else None
        if path:
            CheckpointLoader(load_path=path, load_dict=objects, map_location="cpu").attach(engine)
        CheckpointSaver(save_dir=self.save_dir, save_dict=objects, file_prefix="", epoch_level=True,
                        save_interval=self.save_interval, n_saved=1).attach(engine)
