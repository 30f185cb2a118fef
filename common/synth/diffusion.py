"""DDPM training and sampling with diffusers' schedulers on MONAI/Ignite engines.

Training (Ho et al. 2020): noise a clean image x0 at a random step t with diffusers' ``DDPMScheduler``
(1,000 steps, linear betas) and regress the noise (MSE). Sampling runs the reverse process with DDPM
(all steps) or DDIM (fewer steps, deterministic), batched and seeded, and writes a traceable transfer set.
"""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from tqdm import tqdm

from common.data.io import atomic_folder, file_sha256
from common.models.checkpoints import load_state_file

__all__ = ["build_scheduler", "DiffusionTrainer", "sample", "write_synthetic_set", "ema_handler"]

TRAIN_STEPS = 1000


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def build_scheduler(kind: str = "ddpm", train_steps: int = TRAIN_STEPS, prediction_type: str = "epsilon"):
    """diffusers' DDPM or DDIM scheduler with linear betas (the DDPM paper's schedule).

    ``prediction_type``: what the denoiser predicts: ``epsilon`` (the noise, the DDPM paper),
    ``v_prediction`` (the velocity, Salimans & Ho 2022) or ``sample`` (the clean image).
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction type '{prediction_type}': use one of {', '.join(PREDICTION_TYPES)}")
    if kind == "ddpm":
        return DDPMScheduler(num_train_timesteps=train_steps, beta_schedule="linear", prediction_type=prediction_type)
    if kind == "ddim":
        return DDIMScheduler(num_train_timesteps=train_steps, beta_schedule="linear", prediction_type=prediction_type)
    raise ValueError(f"unknown sampler '{kind}': use 'ddpm' or 'ddim'")


class DiffusionTrainer(SupervisedTrainer):
    """Denoising training; ``network`` is a denoiser ``(x_t, t) -> prediction``.

    Images arrive in [0, 1] and are mapped to [-1, 1]. The loss is MSE on the noise (``epsilon``), the
    velocity (``v_prediction``) or the clean image (``sample``); ``loss_function`` is unused (the bundles pass
    None).

    Args:
        args, kwargs: as ``SupervisedTrainer``.
        train_steps: diffusion steps of the forward process.
        prediction_type: ``epsilon``, ``v_prediction`` or ``sample`` (the sampler must use the same).
    """

    def __init__(self, *args, train_steps: int = TRAIN_STEPS, prediction_type: str = "epsilon", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.noise_scheduler = build_scheduler("ddpm", train_steps, prediction_type)
        self.prediction_type = prediction_type

    def _target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(x0, noise, t)
        return x0 if self.prediction_type == "sample" else noise

    def _iteration(self, engine: DiffusionTrainer, batchdata: dict) -> dict:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x0 = batchdata[Keys.IMAGE].to(engine.state.device, non_blocking=engine.non_blocking)
        x0 = (x0.as_tensor() if hasattr(x0, "as_tensor") else x0) * 2 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
        noisy = self.noise_scheduler.add_noise(x0, noise, t)
        engine.state.output = {Keys.IMAGE: x0}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        with torch.autocast("cuda", enabled=bool(engine.amp and engine.scaler is not None), **engine.amp_kwargs):
            pred = engine.network(noisy, t)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            loss = F.mse_loss(pred.float(), self._target(x0, noise, t))
        engine.state.output.update({Keys.PRED: pred.detach(), Keys.LOSS: loss})
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.amp and engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


@torch.no_grad()
def sample(denoiser: nn.Module, n: int, image_size: int, channels: int, sampler: str = "ddim", steps: int = 50,
           batch_size: int = 16, seed: int = 0, device: str | torch.device = "cpu", progress: bool = True,
           prediction_type: str = "epsilon") -> torch.Tensor:
    """Generate ``n`` images in [0, 1], (n, C, S, S); the same seed and weights give the same images.

    Each batch draws its noise from its own generator seeded with ``seed + batch index``, so a result does
    not depend on what ran before it. ``prediction_type`` is the one the denoiser was trained with.
    """
    scheduler = build_scheduler(sampler, prediction_type=prediction_type)
    scheduler.set_timesteps(steps)  # DDPM: 1,000 for the full reverse process; DDIM: e.g. 50
    denoiser = denoiser.to(device).eval()
    out = []
    batches = range(0, n, batch_size)
    for b, start in enumerate(tqdm(batches, desc=f"sampling ({sampler}, {len(scheduler.timesteps)} steps)",
                                   disable=not progress)):
        g = torch.Generator().manual_seed(seed + b)
        count = min(batch_size, n - start)
        x = torch.randn((count, channels, image_size, image_size), generator=g).to(device)
        for t in scheduler.timesteps:
            eps = denoiser(x, t.expand(count).to(device))
            step = scheduler.step(eps, t, x, generator=g) if sampler == "ddpm" else scheduler.step(eps, t, x, eta=0.0)
            x = step.prev_sample
        out.append(((x.clamp(-1, 1) + 1) / 2).cpu())
    return torch.cat(out)


def write_synthetic_set(denoiser: nn.Module, checkpoint: str, out: str, n: int, image_size: int, channels: int,
                        sampler: str = "ddim", steps: int = 50, batch_size: int = 16, seed: int = 0,
                        device: str | torch.device = "cpu", prediction_type: str = "epsilon") -> dict:
    """Load the generator weights, sample ``n`` images and write them as a transfer set.

    Args:
        denoiser: the denoiser architecture (weights come from ``checkpoint``).
        checkpoint: the synth bundle's ``models/model.pt`` (EMA weights).
        out: output folder: ``sNNNNN.nii.gz`` images, ``datalist.json`` (``training`` list) and
            ``manifest.json`` (checkpoint hash, seed, sampler, steps) so a transfer set can be traced and
            reproduced.
        n, image_size, channels, sampler, steps, batch_size, seed, device, prediction_type: see ``sample``.

    Returns:
        The manifest.
    """
    state = load_state_file(checkpoint, "generator checkpoint", "Train the synth bundle first (configs/train.json).")
    denoiser.load_state_dict(state)
    images = sample(denoiser, n, image_size, channels, sampler, steps, batch_size, seed, device,
                    prediction_type=prediction_type)
    manifest = {"generator": os.path.abspath(checkpoint), "generator_sha256": file_sha256(checkpoint), "seed": seed,
                "sampler": sampler, "steps": steps, "prediction_type": prediction_type, "count": n,
                "image_size": image_size, "channels": channels}
    datalist = {"name": "synthetic", "manifest": manifest, "training": []}
    with atomic_folder(out, datalist) as tmp:
        for i, img in enumerate(images):
            array = (img[0] if channels == 1 else img.permute(1, 2, 0)).numpy().astype(np.float32)
            name = f"s{i:05d}.nii.gz"
            nib.save(nib.Nifti1Image(array, np.eye(4)), os.path.join(tmp, name))
            datalist["training"].append({"image": name})
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
    return manifest


def ema_handler(model: nn.Module, decay: float = 0.999, warmup_iterations: int = 100, warmup_decay: float = 0.9):
    """Ignite's ``EMAHandler`` configured by the usual *decay* (the weight kept by the average).

    In ignite's EMA the ``momentum`` is the weight of the *online* model (``ema = (1 - m) ema + m model``), so
    a decay of 0.999 is a momentum of 0.001. During ``warmup_iterations`` the decay rises linearly from
    ``warmup_decay`` to ``decay``, so a short run's average is not dominated by the random initial weights.

    Args:
        model: the online model.
        decay: weight of the running average per iteration, in (0, 1).
        warmup_iterations: iterations of the linear decay warm-up (0: none).
        warmup_decay: decay at the first iteration.

    Returns:
        The handler; ``handler.ema_model`` holds the average.
    """
    from ignite.handlers import EMAHandler

    if not 0 < decay < 1:
        raise ValueError(f"ema decay must be in (0, 1), got {decay}")
    if warmup_iterations and warmup_iterations > 0 and warmup_decay < decay:
        return EMAHandler(model, momentum=1 - decay, momentum_warmup=1 - warmup_decay, warmup_iters=int(warmup_iterations))
    return EMAHandler(model, momentum=1 - decay)
