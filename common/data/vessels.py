"""A synthetic retinal-vessel set in DRIVE's own layout: thin branching structures for measuring whether a
student can draw what is thinner than its patch, when the real DRIVE is not at hand (it ships in no package).

Each image is a fundus-like disc (field of view, a brighter optic disc, smooth illumination) with a vessel tree
grown from the disc: branches curve at random, fork, and thin by Murray's law at each fork (a child is 2^(-1/3)
of its parent) down to below one pixel. Vessels are drawn 4x supersampled; the manual mask marks pixels more
than half covered, so the finest branches are in the image (faintly) but partly missing from the mask, as in real
annotations. ``write_vessel_tree`` writes DRIVE's folders (``training/images/NN_training.tif``,
``1st_manual/NN_manual1.gif``, ``mask/NN_training_mask.gif``, ``test/`` likewise), so it is read by the same
converter as the real set (``tskd-prepare drive``); ``prepare_vessels`` does both.
"""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np

__all__ = ["vessel_case", "write_vessel_tree", "prepare_vessels"]

SUPERSAMPLE = 4
MURRAY = 2.0 ** (-1.0 / 3.0)


def _grow(rng: np.random.Generator, start: tuple[float, float], heading: float, width: float, radius: float,
          centre: tuple[float, float], segments: list) -> None:
    """Grow one branch (and its children) from ``start``; appends (x0, y0, x1, y1, width) to ``segments``."""
    stack = [(start, heading, width, 0)]
    while stack:
        (x, y), heading, width, depth = stack.pop()
        length = rng.uniform(0.15, 0.35) * radius
        step = max(radius / 60.0, 1.0)
        for _ in range(int(length / step)):
            heading += rng.normal(0.0, 0.12)
            nx, ny = x + step * math.cos(heading), y + step * math.sin(heading)
            if math.hypot(nx - centre[0], ny - centre[1]) > radius:
                break
            segments.append((x, y, nx, ny, width))
            x, y = nx, ny
        else:
            child = width * MURRAY
            if child >= 0.5 * SUPERSAMPLE and depth < 7:  # down to half a pixel
                spread = rng.uniform(0.35, 0.7)
                stack.append(((x, y), heading + spread, child, depth + 1))
                stack.append(((x, y), heading - spread * rng.uniform(0.6, 1.0), child, depth + 1))


def vessel_case(size: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic fundus image (H, W, 3 uint8), its vessel mask (H, W, 0/255) and field of view (0/255)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    h, w = size
    H, W = h * SUPERSAMPLE, w * SUPERSAMPLE
    centre = (W / 2.0, H / 2.0)
    radius = 0.46 * min(H, W)
    side = rng.choice([-1.0, 1.0])
    disc = (centre[0] + side * 0.3 * radius, centre[1] + rng.normal(0.0, 0.05) * radius)
    segments: list = []
    base = 2.6 * SUPERSAMPLE * min(h, w) / 256.0  # a main vessel ~2.6 px wide at 256²
    for k in range(4):  # up and down from the disc, tilted towards the centre: two pairs of arcades
        tilt = side * rng.uniform(0.3, 0.8)
        heading = -math.pi / 2 - tilt if k % 2 == 0 else math.pi / 2 + tilt
        _grow(rng, disc, heading, base * rng.uniform(0.8, 1.1), radius, centre, segments)
    coverage = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(coverage)
    for x0, y0, x1, y1, width in segments:
        r = width / 2.0
        draw.line((x0, y0, x1, y1), fill=255, width=max(1, int(round(width))))
        draw.ellipse((x1 - r, y1 - r, x1 + r, y1 + r), fill=255)
    cover = np.asarray(coverage.resize((w, h), Image.BOX), np.float32) / 255.0
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) * SUPERSAMPLE
    fov = np.hypot(xx - centre[0], yy - centre[1]) <= radius
    disc_glow = np.exp(-(np.hypot(xx - disc[0], yy - disc[1]) / (0.12 * radius)) ** 2)
    illumination = 1.0 - 0.35 * (np.hypot(xx - centre[0], yy - centre[1]) / radius) ** 2
    smooth = np.asarray(Image.fromarray((rng.random((h, w)) * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(6)), np.float32) / 255.0
    background = np.clip(0.55 * illumination + 0.4 * disc_glow + 0.15 * (smooth - 0.5), 0.0, 1.0)
    colour = np.array([0.85, 0.45, 0.2], np.float32)
    image = background[..., None] * colour * (1.0 - 0.55 * cover[..., None])
    image += rng.normal(0.0, 0.02, image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0) * fov[..., None]
    mask = (cover > 0.5) & fov
    return (image * 255).astype(np.uint8), mask.astype(np.uint8) * 255, fov.astype(np.uint8) * 255


def write_vessel_tree(root: str, n_train: int = 20, n_test: int = 20, size: tuple[int, int] = (292, 282),
                      seed: int = 0) -> str:
    """Write ``n_train`` + ``n_test`` synthetic cases into ``root`` in DRIVE's distribution layout (DRIVE's
    numbering: test 01.., training 21..; default size half of DRIVE's 584 x 565)."""
    from PIL import Image

    for split, numbers in (("training", range(21, 21 + n_train)), ("test", range(1, 1 + n_test))):
        for folder in ("images", "1st_manual", "mask"):
            os.makedirs(os.path.join(root, split, folder), exist_ok=True)
        for n in numbers:
            image, manual, fov = vessel_case(size, seed * 1000 + n)
            tag = f"{n:02d}_{split}"
            Image.fromarray(image).save(os.path.join(root, split, "images", f"{tag}.tif"))
            Image.fromarray(manual).save(os.path.join(root, split, "1st_manual", f"{n:02d}_manual1.gif"))
            Image.fromarray(fov).save(os.path.join(root, split, "mask", f"{tag}_mask.gif"))
    return root


def prepare_vessels(out: str, image_size: int = 128, n_train: int = 20, n_test: int = 20, seed: int = 0,
                    val_fraction: float = 0.1) -> dict:
    """The synthetic set written in DRIVE's layout, then converted by the DRIVE converter into ``out``."""
    from common.data.datasets import prepare_dataset

    with tempfile.TemporaryDirectory(prefix="tskd-vessels-") as src:
        write_vessel_tree(src, n_train=n_train, n_test=n_test, seed=seed)
        return prepare_dataset("drive", src, out, image_size=image_size, seed=seed, val_fraction=val_fraction)
