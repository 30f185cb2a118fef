"""Self-supervised pre-training (MAE, MoCo v3) on MONAI's ``SupervisedTrainer`` (only ``_iteration`` changes)."""

from __future__ import annotations

from collections.abc import Sequence

from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

from common.engines.distill_trainer import optimisation_step

__all__ = ["SelfSupervisedTrainer"]


class SelfSupervisedTrainer(SupervisedTrainer):
    """Trains a network whose forward returns its own ``loss`` from unlabelled images: a
    ``MaskedAutoencoder`` (one view) or ``MoCoV3`` (two views, and its momentum encoder updated after
    every optimizer step, with the momentum its schedule gives at this point of the run). ``loss_function`` is unused.

    Args:
        views: batch keys of the views passed to the network, in order (``["image"]``; MoCo v3:
            ``["image", "image_2"]``, two independently augmented copies).
        args, kwargs: as ``SupervisedTrainer``.
    """

    def __init__(self, *args, views: Sequence[str] = ("image",), **kwargs) -> None:
        kwargs.setdefault("loss_function", None)
        super().__init__(*args, **kwargs)
        self.views = list(views)

    def _iteration(self, engine: SelfSupervisedTrainer, batchdata: dict) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        inputs = []
        for key in self.views:
            x = batchdata[key].to(engine.state.device, non_blocking=engine.non_blocking)
            inputs.append(x.as_tensor() if hasattr(x, "as_tensor") else x)
        engine.state.output = {Keys.IMAGE: inputs[0]}

        def forward_loss() -> None:
            out = engine.network(*inputs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.state.output[Keys.LOSS] = out["loss"]
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        optimisation_step(engine, forward_loss)
        network = getattr(engine.network, "module", engine.network)  # DDP wraps it
        if hasattr(network, "momentum_update"):
            total = engine.state.max_epochs * (engine.state.epoch_length or 1)
            network.momentum_update(progress=(engine.state.iteration - 1) / max(total, 1))
        return engine.state.output

