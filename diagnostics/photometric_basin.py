"""How far the photometric loss alone takes a face from the mean face: each synthetic test image's code
is fitted directly (no encoder) with Adam under a coarse-to-fine blur schedule, with the training loss
of the config (landmark term off). The result bounds what photometric-only training (E1) can reach from
the zero code in the same loss landscape. `--light-first N` first fits the light alone for N steps
(at the first blur sigma) and then everything: from the mean face the pose gradient is mostly noise
until the light matches the image.

    python -m diagnostics.photometric_basin --config default --images 16 --blur 4,0 --blur 0
    python -m diagnostics.photometric_basin --config default --images 32 --blur 4,0 --light-first 0,100
    python -m diagnostics.photometric_basin --config default --images 200 --directions 4
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from mofa.decoder import Decoder
from mofa.decoder.layout import POSE_ENTRIES
from mofa.errors import MofaError
from mofa.losses import LossWeights, mofa_loss, with_fitted_light
from mofa.training.evaluate import synthetic_metrics
from mofa.training.trainer import gaussian_blur


def fit_codes(decoder: Decoder, images: torch.Tensor, weights: LossWeights, blur_px: tuple[float, ...],
              steps: int = 300, lr: float = 0.02, light_first: int = 0) -> torch.Tensor:
    """Codes (B, D) fitted to images (B, 3, S, S) from zero by Adam on the photometric loss; the steps
    are split evenly over the blur sigmas (px), coarse first. light_first: steps before those that
    fit only the light entries (at the first sigma), the rest held at the mean face."""
    code = torch.zeros(len(images), decoder.code_size)
    if light_first > 0:
        code = _adam(decoder, code, images, weights, (blur_px[0],), light_first, lr, only=decoder.layout.mask("light"))
    return _adam(decoder, code, images, weights, blur_px, steps, lr)


def _adam(decoder: Decoder, start: torch.Tensor, images: torch.Tensor, weights: LossWeights,
          blur_px: tuple[float, ...], steps: int, lr: float, only: torch.Tensor | None = None) -> torch.Tensor:
    code = start.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([code], lr=lr)
    for k in range(steps):
        sigma = blur_px[min(len(blur_px) - 1, k * len(blur_px) // steps)]
        terms = mofa_loss(decoder, code, gaussian_blur(images, sigma), weights=weights)
        optimiser.zero_grad()
        (terms.total * len(images)).backward()  # per-image sum: each code's step ignores the batch size
        if only is not None:
            code.grad[:, ~only] = 0
        optimiser.step()
    return code.detach()


def gradient_agreement(decoder: Decoder, codes: torch.Tensor, truth: torch.Tensor, images: torch.Tensor,
                       weights: LossWeights, sigma: float = 0.0) -> dict[str, float]:
    """Per pose entry, the share of images whose photometric loss gradient at `codes` (B, D) points
    towards `truth` (B, D): descending it would move that entry the right way. Images where the entry is
    already exact are left out (NaN when none is left)."""
    code = codes.clone().requires_grad_(True)
    terms = mofa_loss(decoder, code, gaussian_blur(images, sigma), weights=weights)
    (grad,) = torch.autograd.grad(terms.total, code)
    shares = {}
    for entry in POSE_ENTRIES:
        k = decoder.layout.index(entry)
        towards, needed = torch.sign(-grad[:, k]), torch.sign(truth[:, k] - codes[:, k])
        moving = needed != 0
        shares[entry] = float((towards[moving] == needed[moving]).float().mean()) if moving.any() else float("nan")
    return shares


def agreement_starts(decoder: Decoder, truth: torch.Tensor, images: torch.Tensor | None = None,
                     sigma: float = 0.0) -> dict[str, torch.Tensor]:
    """Starting codes for gradient_agreement: the mean face, and the mean face given the true light,
    the true reflectance, or both (pose, shape and expression always at the mean); with `images`, also
    the mean face under its least-squares light (what the best light for a wrong pose does to the
    pose gradient)."""
    starts = {label: torch.where(decoder.layout.mask(*parts), truth, 0.0)
              for label, parts in (("mean face", ()), ("true light", ("light",)), ("true reflectance", ("reflectance",)),
                                   ("true light and reflectance", ("light", "reflectance")))}
    if images is not None:
        starts["least-squares light"] = with_fitted_light(decoder, starts["mean face"], gaussian_blur(images, sigma))
    return starts


def summary(decoder: Decoder, codes: torch.Tensor, batch: dict) -> dict[str, float]:
    """Mean geometric (mm), landmark (px) error and mean absolute yaw / pitch error (deg)."""
    with torch.no_grad():
        m = synthetic_metrics(decoder, codes, batch)
    return {"geometric_mm": float(m["geometric_error"].mean()), "landmark_px": float(m["landmark_error"].mean()),
            "yaw_deg": float(m["yaw_error"].mean()), "pitch_deg": float(m["pitch_error"].mean())}


def main(argv: list[str] | None = None) -> int:
    from mofa.config import load_config
    from mofa.data.synthetic import SyntheticSet
    from mofa.facemodel import build_face_model
    from mofa.training.runs import loss_weights, training_decoder
    from pipelines import synthetic

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="default", help="preset name or YAML path (its synthetic test set must exist)")
    p.add_argument("--images", type=int, default=16, help="first N test images")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--blur", action="append", default=None,
                   help="comma-separated blur sigmas in px, coarse to fine; repeat for several schedules (default 0 and 4,0)")
    p.add_argument("--directions", type=float, default=None, metavar="SIGMA",
                   help="instead of fitting: the share of images whose loss gradient (blur SIGMA px) points each "
                        "pose entry towards the truth, from the mean face, with the true light and/or reflectance, and "
                        "under the least-squares light")
    p.add_argument("--light-first", default="0",
                   help="comma-separated light-only step counts before each schedule; every schedule runs with each (default 0)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        decoder = training_decoder(cfg, build_face_model(cfg))
        test = SyntheticSet(synthetic.data_dir(cfg) / "test")
    except MofaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    batch = test.batch(np.arange(min(args.images, len(test))))
    weights = loss_weights(cfg, landmarks=False)
    if args.directions is not None:
        truth = batch["codes"].float()
        print(f"{len(truth)} synthetic test images: share whose loss gradient (blur {args.directions:g} px) "
              "points towards the true value, per pose entry")
        for label, start in agreement_starts(decoder, truth, batch["images"], args.directions).items():
            shares = gradient_agreement(decoder, start, truth, batch["images"], weights, args.directions)
            print(f"  {label:28s}", "  ".join(f"{k} {v:4.0%}" for k, v in shares.items()), flush=True)
        return 0
    print(f"{len(batch['images'])} synthetic test images, {args.steps} Adam steps per schedule")
    print("start (mean face):", summary(decoder, torch.zeros_like(batch["codes"]), batch))
    try:
        light_steps = [int(v) for v in args.light_first.split(",")]
    except ValueError:
        p.error(f"--light-first: expected comma-separated step counts, got {args.light_first!r}")
    for schedule in args.blur or ["0", "4,0"]:
        sigmas = tuple(float(s) for s in schedule.split(","))
        for n_light in light_steps:
            codes = fit_codes(decoder, batch["images"], weights, sigmas, args.steps, light_first=n_light)
            label = f"blur {sigmas}" + (f", light alone first for {n_light} steps" if n_light else "")
            print(f"{label}:", {k: round(v, 2) for k, v in summary(decoder, codes, batch).items()}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
