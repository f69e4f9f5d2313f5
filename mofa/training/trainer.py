"""Unsupervised training of an encoder through the analytic decoder: AdaDelta, atomic checkpoints,
exact resume, evaluation at fixed iterations into a metrics CSV.

Exact resume without saved random state: iteration i draws its batch from
`numpy.random.default_rng([seed, i])` and seeds torch (dropout) with `seed * 1_000_003 + i`, so a run
resumed from the checkpoint of iteration k repeats iterations k+1.. exactly as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mofa.config import schema_default
from mofa.errors import MofaError, one_line
from mofa.io import read_csv, torch_save, write_text
from mofa.losses import LossWeights, mofa_loss, with_fitted_light
from mofa.training.distributed import World
from mofa.training.precision import encode, prepare_encoder

log = logging.getLogger(__name__)
CHECKPOINT = "checkpoint.pt"
# With fit_light, the encoder's light output regresses onto the fitted light with this weight on the
# squared difference of the 27 SH numbers (a few tenths each; the photometric term is ~0.3 x 1.92):
# enough for its light to follow (E1's photometric error at the end is the encoder's own light's).
LIGHT_TARGET_WEIGHT = 1.0
FINAL = "encoder.pt"
CALIBRATION_IMAGES = 256  # the first training images an encoder's `calibrate` sees
METRICS = "metrics.csv"


class TrainingData(Protocol):
    def __len__(self) -> int: ...
    def batch(self, indices, device="cpu") -> dict[str, torch.Tensor]: ...


# The config keys an experiment's section may set to shape its Schedule (`Schedule.from_config`).
SCHEDULE_KEYS = ("fit_light", "hold", "hold_until")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """What trains when, beyond the paper's plain schedule (everything off by default).

    fit_light: with n > 0, the photometric term uses each image's own best light for the rest of the
    code (n IRLS solves of the l2,1 fit, `with_fitted_light`; no gradient through it) instead of the
    encoder's light, and the encoder's light output learns that light by regression
    (LIGHT_TARGET_WEIGHT); hold: code parts or single pose entries (names as `CodeLayout.mask`, e.g.
    "roll", "tx") that get no gradient during the first hold_until * iterations steps, so they keep
    their starting output (zero from a fresh head) while the rest of the code learns."""
    fit_light: int = 0
    hold: tuple[str, ...] = ()
    hold_until: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hold", tuple(self.hold))

    @classmethod
    def from_config(cls, section: Mapping) -> "Schedule":
        """From an experiment's config section: those of SCHEDULE_KEYS it has."""
        return cls(**{k: section[k] for k in SCHEDULE_KEYS if k in section})

    def held_steps(self, iterations: int) -> int:
        """Steps (from the first) in which the `hold` entries get no gradient."""
        return int(round(self.hold_until * iterations)) if self.hold else 0


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """One training run. iterations: optimiser steps; optimiser: "adadelta" (the paper; rho, eps) or
    "adam" (PyTorch's defaults beside lr); lr, lr_z, backbone_lr_scale: see `Encoder.parameter_groups`; eval_at: iterations at which to evaluate
    (0 and the last are always included); input_size: side the images are resized to for the
    encoder (the loss always sees the full crop); blur_sigma_px, blur_until: the loss's blur
    (`blur_sigma`); schedule: what trains when (`Schedule`); precision: the encoder's arithmetic in
    training steps, "fp32" or "bf16" (autocast, `mofa.training.precision`; resolved from "auto" by the
    caller); evaluation always runs the encoder in fp32."""
    iterations: int
    batch_size: int = schema_default("training", "batch_size")
    optimiser: str = schema_default("training", "optimiser")
    lr: float = schema_default("training", "lr")
    lr_z: float = schema_default("training", "lr_z")
    backbone_lr_scale: float = schema_default("training", "backbone_lr_scale")
    rho: float = schema_default("training", "rho")
    eps: float = schema_default("training", "eps")
    eval_at: tuple[int, ...] = ()
    checkpoint_every: int = schema_default("training", "checkpoint_every")
    input_size: int = schema_default("training", "input_size")
    seed: int = schema_default("seed")
    blur_sigma_px: float = schema_default("training", "blur_sigma_px")
    blur_until: float = schema_default("training", "blur_until")
    schedule: Schedule = Schedule()
    precision: str = schema_default("training", "precision")
    progress: bool = True

    def eval_points(self) -> list[int]:
        return sorted({0, self.iterations, *[i for i in self.eval_at if 0 <= i <= self.iterations]})


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """images (B, C, H, W) blurred by a separable Gaussian of `sigma` px (reflect padding)."""
    if sigma <= 0.05:
        return images
    radius = int(math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def blur_sigma(settings: TrainSettings, it: int) -> float:
    """The loss's blur (px) at iteration `it` (1-based): blur_sigma_px at the first, falling linearly to
    0 over blur_until of the iterations."""
    span = max(1.0, settings.blur_until * settings.iterations)
    return settings.blur_sigma_px * max(0.0, 1.0 - (it - 1) / span)


def held_steps(settings: TrainSettings) -> int:
    return settings.schedule.held_steps(settings.iterations)


def encoder_input(images: torch.Tensor, size: int) -> torch.Tensor:
    """images (B, 3, H, W) in [0, 1] -> (B, 3, size, size) for the encoder (antialiased resize)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def predict_codes(encoder: torch.nn.Module, images: torch.Tensor, input_size: int, batch_size: int = 32) -> torch.Tensor:
    """Codes (B, D) for images (B, 3, H, W) in [0, 1], in eval mode, without gradients."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        codes = torch.cat([encoder(encoder_input(images[i:i + batch_size], input_size))
                           for i in range(0, len(images), batch_size)])
    encoder.train(was_training)
    return codes


def atomic_csv(frame: pd.DataFrame, path: Path) -> None:
    write_text(path, frame.to_csv(index=False, float_format="%.6g"))


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MofaError(f"{path}: unreadable checkpoint ({one_line(exc)}); delete it to start over") from None


OPTIMISERS = ("adadelta", "adam")


def make_optimiser(encoder: torch.nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """The run's optimiser over `encoder.parameter_groups`."""
    groups = encoder.parameter_groups(settings.lr, settings.lr_z, settings.backbone_lr_scale)
    if settings.optimiser == "adadelta":
        return torch.optim.Adadelta(groups, rho=settings.rho, eps=settings.eps)
    if settings.optimiser == "adam":
        # The fused kernel: dlib's 5.9M weights stepped in 5.9 ms against 34 for the default for-loop;
        # it rounds differently, so Adam runs differ from those before it in the last digits
        # (docs/cpu-findings.md, "Where a training step goes").
        return torch.optim.Adam(groups, fused=True)
    raise MofaError(f"training optimiser {settings.optimiser!r}: choose one of {', '.join(OPTIMISERS)}")


def visible_share(decoded, face_mask: torch.Tensor, height: int, width: int) -> float:
    """Batch mean of the share of face-region vertices in the photometric term's visible set V: a
    falling share means the loss is being lowered by turning or sliding the face away."""
    from mofa.losses import visible_vertices
    visible = visible_vertices(decoded, face_mask.to(decoded.screen.device), height, width)
    return float(visible.sum(-1).float().mean() / max(int(face_mask.sum()), 1))


def train(run_dir: str | Path, encoder: torch.nn.Module, decoder: torch.nn.Module, data: TrainingData,
          settings: TrainSettings, weights: LossWeights, evaluate: Callable[[torch.nn.Module], dict] | None = None,
          device: torch.device | str = "cpu", resume: bool = True) -> pd.DataFrame:
    """Train `encoder` (images -> codes) through `decoder` on `data`; returns the metrics table.

    run_dir receives checkpoint.pt (every `checkpoint_every` iterations and at the end), metrics.csv
    (one row per evaluation: iteration, loss terms, what `evaluate` returns) and encoder.pt (final
    weights). With resume, an existing checkpoint is continued.

    Under torchrun it trains on all the processes (`mofa.training.distributed`): the same global
    batches as one process, each process its share; rank 0 alone evaluates and writes.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    world = World.current(device)
    world.barrier()  # rank 0 has prepared the run folder
    prepare_encoder(encoder.to(device), settings.precision).train()
    decoder.to(device)
    optimiser = make_optimiser(encoder, settings)
    rows: list[dict] = []
    start_it, running = 0, None
    ckpt_path = run_dir / CHECKPOINT
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if not isinstance(state, dict):
            raise MofaError(f"{ckpt_path}: not a trainer checkpoint (a {type(state).__name__}); delete it to start over")
        if state.get("settings") != _settings_key(settings):
            raise MofaError(f"{ckpt_path}: was written with other training settings; delete the run folder to start over")
        try:  # a file of the right settings but edited or of another encoder: named, not a traceback
            encoder.load_state_dict(state["encoder"])
            optimiser.load_state_dict(state["optimiser"])
            start_it = int(state["iteration"])
            running = state.get("running_loss")
            # The curves so far come from the checkpoint: a workflow engine deletes metrics.csv (a declared
            # output) before it runs an interrupted stage again. (Checkpoints from before they held the rows:
            # metrics.csv where it is still there.)
            if "rows" in state:
                rows = [dict(r) for r in state["rows"] if r["iteration"] <= start_it]
            elif (run_dir / METRICS).exists():
                rows = [r for r in read_csv(run_dir / METRICS, ("iteration",), "training curves").to_dict("records")
                        if r["iteration"] <= start_it]
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise MofaError(f"{ckpt_path}: not a checkpoint of this run ({one_line(exc)}); delete it to start over") from None
        if rows and world.is_main:
            atomic_csv(pd.DataFrame(rows), run_dir / METRICS)
        log.info("resumed %s at iteration %d", run_dir, start_it)
    elif ckpt_path.exists() and world.is_main:
        ckpt_path.unlink()

    eval_points = set(settings.eval_points())
    n = len(data)
    if n < settings.batch_size:
        raise MofaError(f"training data has {n} images, fewer than the batch size {settings.batch_size}")
    light = decoder.layout.mask("light", device=device)
    try:
        held = decoder.layout.mask(*settings.schedule.hold, device=device)
    except ValueError as exc:
        raise MofaError(f"training setting hold: {exc}") from None
    if start_it == 0 and encoder.needs_calibration:
        first = data.batch(np.arange(min(n, CALIBRATION_IMAGES)), device)["images"]
        encoder.calibrate(encoder_input(first, settings.input_size))
    if start_it == 0 and 0 in eval_points and evaluate is not None and world.is_main:
        rows.append({"iteration": 0, "seconds": 0.0, **evaluate(encoder)})
        atomic_csv(pd.DataFrame(rows), run_dir / METRICS)
    seconds = float(rows[-1]["seconds"]) if rows else 0.0
    bar = tqdm(range(start_it + 1, settings.iterations + 1), initial=start_it, total=settings.iterations,
               desc=f"train {run_dir.name}", unit="it", disable=not settings.progress or not world.is_main, leave=False)
    model = world.wrap(encoder, settings.batch_size, device)
    tick = time.perf_counter()
    for it in bar:
        rng = np.random.default_rng([settings.seed, it])
        torch.manual_seed(settings.seed * 1_000_003 + it)
        batch = world.local_batch(data, rng.choice(n, settings.batch_size, replace=False), device)
        code = encode(model, encoder_input(batch["images"], settings.input_size), settings.precision)
        if it <= held_steps(settings):
            code = torch.where(held, code.detach(), code)
        use_landmarks = weights.land > 0 and "landmarks" in batch
        images = gaussian_blur(batch["images"], blur_sigma(settings, it))
        light_target = None
        if settings.schedule.fit_light:
            # with the wrong light the pose gradient is mostly noise; each image's best light is not
            fitted = with_fitted_light(decoder, code, images, settings.schedule.fit_light)
            light_target = LIGHT_TARGET_WEIGHT * ((code - fitted)[:, light] ** 2).sum(-1).mean()
            code = torch.where(light, fitted, code)
        terms = mofa_loss(decoder, code, images, batch.get("landmarks") if use_landmarks else None,
                          batch.get("landmark_confidence") if use_landmarks else None,
                          weights if use_landmarks else dataclasses.replace(weights, land=0.0))
        total = terms.total if light_target is None else terms.total + light_target
        optimiser.zero_grad(set_to_none=True)
        world.scaled(total, settings.batch_size).backward()
        optimiser.step()
        loss = world.batch_means({"total": float(total.detach())}, settings.batch_size)["total"]
        if not np.isfinite(loss):
            raise MofaError(f"{run_dir}: loss became {loss} at iteration {it}; lower the learning rate or check the data")
        running = loss if running is None else 0.95 * running + 0.05 * loss
        bar.set_postfix(loss=f"{running:.4f}")
        if it in eval_points or it % settings.checkpoint_every == 0:
            now = time.perf_counter()
            seconds += now - tick
            if it in eval_points and evaluate is not None:
                train_terms = world.batch_means({
                    **{f"train_{k}": v for k, v in terms.log().items()},
                    **({} if light_target is None else {"train_light_target": float(light_target.detach())}),
                    "train_visible_share": visible_share(terms.decoded, decoder.face_mask, *images.shape[-2:])},
                    settings.batch_size)
                if world.is_main:
                    rows.append({"iteration": it, "seconds": round(seconds, 2), "train_loss": running,
                                 **train_terms, **evaluate(encoder)})
                    atomic_csv(pd.DataFrame(rows), run_dir / METRICS)
            if world.is_main:
                torch_save({"iteration": it, "encoder": encoder.state_dict(), "optimiser": optimiser.state_dict(),
                                   "running_loss": running, "settings": _settings_key(settings),
                                   "rows": _plain(rows)}, ckpt_path)
            tick = time.perf_counter()
    bar.close()
    world.unwrap(encoder)
    if world.is_main:
        torch_save(encoder.state_dict(), run_dir / FINAL)
    world.barrier()
    # The curves as on disk (6 digits), so that a resumed and an uninterrupted run return, and plot,
    # exactly the same numbers.
    return pd.read_csv(run_dir / METRICS) if world.from_main(bool(rows)) else pd.DataFrame(rows)


def _plain(rows: list[dict]) -> list[dict]:
    """The metrics rows with NumPy scalars as Python numbers (what `torch.load(weights_only=True)` reads)."""
    return [{k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()} for row in rows]


def _settings_key(settings: TrainSettings) -> dict:
    """What must match for a checkpoint to be resumed (progress display excluded)."""
    d = dataclasses.asdict(settings)
    d.pop("progress")
    d["eval_at"] = list(d["eval_at"])
    d["schedule"]["hold"] = list(d["schedule"]["hold"])
    return d
