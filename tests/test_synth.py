import json
import math
import os

import pytest
import torch
from ignite.handlers import EMAHandler

from common.synth import DiffusionTrainer, build_denoiser, quality_report, sample, write_synthetic_set


@pytest.mark.parametrize("kind", ["unet", "swin"])
@pytest.mark.parametrize("channels", [1, 3])
def test_denoiser_trains_one_step_with_ema_and_samples(kind, channels):
    torch.manual_seed(0)
    size = 64 if kind == "swin" else 32  # SwinUNETR's bottleneck (size / 32) needs more than one pixel
    net = build_denoiser(kind, image_size=size, channels=channels, width=12 if kind == "swin" else 16)
    data = [{"image": torch.rand(2, channels, size, size)}]
    trainer = DiffusionTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net,
                               optimizer=torch.optim.Adam(net.parameters(), 1e-3), loss_function=None)
    ema = EMAHandler(net, momentum=0.9)
    ema.attach(trainer)
    before = [p.detach().clone() for p in net.parameters()]
    trainer.run()
    from monai.handlers import from_engine

    assert math.isfinite(float(from_engine(["loss"], first=True)(trainer.state.output)))
    changed = sum(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert changed > 0.9 * len(before)  # the noise-prediction loss reaches (nearly) every parameter
    images = sample(ema.ema_model, n=2, image_size=size, channels=channels, sampler="ddim", steps=2, batch_size=2,
                    progress=False)
    assert images.shape == (2, channels, size, size) and 0 <= images.min() and images.max() <= 1


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_training_target_by_hand(prediction):
    """The regression target of each prediction type, from the forward process x_t = a x0 + s eps with
    a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t): eps, v = a eps - s x0, or x0."""
    torch.manual_seed(0)
    net = build_denoiser("unet", image_size=32, channels=1, width=16)
    trainer = DiffusionTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[], network=net,
                               optimizer=torch.optim.Adam(net.parameters()), loss_function=None,
                               prediction_type=prediction)
    x0, eps, t = torch.rand(2, 1, 4, 4) * 2 - 1, torch.randn(2, 1, 4, 4), torch.tensor([10, 900])
    alpha_bar = trainer.noise_scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    expected = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[prediction]
    torch.testing.assert_close(trainer._target(x0, eps, t), expected)
    # The sampler inverts the same parametrisation: from the true target at step t it recovers x0.
    from common.synth.diffusion import build_scheduler

    scheduler = build_scheduler("ddim", prediction_type=prediction)
    scheduler.set_timesteps(1000)
    x_t = a[1:] * x0[1:] + s[1:] * eps[1:]
    step = scheduler.step(expected[1:], int(t[1]), x_t, eta=0.0)
    torch.testing.assert_close(step.pred_original_sample, x0[1:].clamp(-1, 1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="prediction type"):
        build_scheduler("ddim", prediction_type="noise")


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sampling_is_reproducible(sampler):
    torch.manual_seed(0)
    net = build_denoiser("unet", image_size=32, channels=1, width=16)
    a = sample(net, n=3, image_size=32, channels=1, sampler=sampler, steps=4, batch_size=2, seed=7, progress=False)
    b = sample(net, n=3, image_size=32, channels=1, sampler=sampler, steps=4, batch_size=2, seed=7, progress=False)
    c = sample(net, n=3, image_size=32, channels=1, sampler=sampler, steps=4, batch_size=2, seed=8, progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_synthetic_set_is_traceable(tmp_path):
    net = build_denoiser("unet", image_size=32, channels=1, width=16)
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    manifest = write_synthetic_set(build_denoiser("unet", 32, 1, 16), str(ckpt), str(tmp_path / "syn"), n=3,
                                   image_size=32, channels=1, steps=2, seed=5)
    assert manifest["seed"] == 5 and manifest["sampler"] == "ddim" and len(manifest["generator_sha256"]) == 64
    datalist = json.load(open(tmp_path / "syn" / "datalist.json"))
    assert [d["image"] for d in datalist["training"]] == ["s00000.nii.gz", "s00001.nii.gz", "s00002.nii.gz"]
    again = write_synthetic_set(build_denoiser("unet", 32, 1, 16), str(ckpt), str(tmp_path / "again"), n=3,
                                image_size=32, channels=1, steps=2, seed=5)
    import nibabel as nib
    import numpy as np

    for name in ("s00000.nii.gz", "s00002.nii.gz"):
        np.testing.assert_array_equal(np.asarray(nib.load(str(tmp_path / "syn" / name)).dataobj),
                                      np.asarray(nib.load(str(tmp_path / "again" / name)).dataobj))
    assert again["generator_sha256"] == manifest["generator_sha256"]


def test_quality_report_by_hand_and_near_copies(tmp_path):
    real = torch.zeros(2, 1, 8, 8)
    real[1] = 1.0
    synthetic = torch.full((3, 1, 8, 8), 0.5)
    synthetic[2] = 1.0  # a copy of real image 1
    report = quality_report(synthetic, real, str(tmp_path))
    first = report["per_image"][0]
    assert first["mse"] == pytest.approx(127.5**2) and first["psnr"] == pytest.approx(10 * math.log10(255**2 / 127.5**2))
    assert report["per_image"][2]["nearest_real"] == 1 and report["near_copies"] == [2]
    assert os.path.getsize(tmp_path / "samples.png") > 1000 and (tmp_path / "quality.json").is_file()


def _ema_run(decay, warmup, values):
    """Run an engine whose model's one weight is set to ``values[i]`` at iteration i; return the average."""
    import torch.nn as nn
    from ignite.engine import Engine, Events

    from common.synth import ema_handler

    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(values[0])
    engine = Engine(lambda e, b: None)

    @engine.on(Events.ITERATION_STARTED)
    def set_weight(e):
        with torch.no_grad():
            model.weight.fill_(values[e.state.iteration - 1])

    handler = ema_handler(model, decay=decay, warmup_iterations=warmup)
    handler.attach(engine)
    engine.run(range(len(values)), max_epochs=1)
    return handler.ema_model.weight.item(), model.weight.item()


def test_ema_is_an_average_with_the_configured_decay():
    # No warm-up: ema_t = d * ema_{t-1} + (1 - d) * w_t, starting from the initial weight 0.
    values = [0.0] + [1.0] * 10
    ema, online = _ema_run(0.9, 0, values)
    expected = 0.0
    for w in values:
        expected = 0.9 * expected + 0.1 * w
    assert ema == pytest.approx(expected, rel=1e-5) and ema == pytest.approx(1 - 0.9 ** 10, rel=1e-5)
    assert online == 1.0 and abs(online - ema) > 0.3  # the average lags the online weights (it is not a copy)
    # Warm-up: the decay starts lower, so after a few steps the average has left the initial weights further.
    warm, _ = _ema_run(0.999, 5, values)
    cold, _ = _ema_run(0.999, 0, values)
    assert cold == pytest.approx(1 - 0.999 ** 10, rel=1e-4) and warm > 10 * cold
