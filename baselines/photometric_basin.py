"""How far the photometric loss alone takes a face from the mean face: each synthetic test image's code
is fitted directly (no encoder) with Adam under a coarse-to-fine blur schedule, with the training loss
of the config (landmark term off). The result bounds what photometric-only training (E1) can reach from
the zero code in the same loss landscape.

    python -m baselines.photometric_basin --config default --images 16 --blur 4,0 --blur 0
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from mofa.decoder import Decoder
from mofa.errors import MofaError
from mofa.losses import LossWeights, mofa_loss
from mofa.training.evaluate import synthetic_metrics
from mofa.training.trainer import gaussian_blur


def fit_codes(decoder: Decoder, images: torch.Tensor, weights: LossWeights, blur_px: tuple[float, ...],
              steps: int = 300, lr: float = 0.02) -> torch.Tensor:
    """Codes (B, D) fitted to images (B, 3, S, S) from zero by Adam on the photometric loss; the steps
    are split evenly over the blur sigmas (px), coarse first."""
    code = torch.zeros(len(images), decoder.code_size, requires_grad=True)
    optimiser = torch.optim.Adam([code], lr=lr)
    for k in range(steps):
        sigma = blur_px[min(len(blur_px) - 1, k * len(blur_px) // steps)]
        terms = mofa_loss(decoder, code, gaussian_blur(images, sigma), weights=weights)
        optimiser.zero_grad()
        (terms.total * len(images)).backward()  # per-image sum: each code's step ignores the batch size
        optimiser.step()
    return code.detach()


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
    print(f"{len(batch['images'])} synthetic test images, {args.steps} Adam steps per schedule")
    print("start (mean face):", summary(decoder, torch.zeros_like(batch["codes"]), batch))
    for schedule in args.blur or ["0", "4,0"]:
        sigmas = tuple(float(s) for s in schedule.split(","))
        codes = fit_codes(decoder, batch["images"], weights, sigmas, args.steps)
        print(f"blur {sigmas}:", {k: round(v, 2) for k, v in summary(decoder, codes, batch).items()}, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
