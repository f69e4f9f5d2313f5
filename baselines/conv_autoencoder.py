"""The convolutional autoencoder MoFA is compared with in the paper's Fig. 12 (Sec. 7, "Comparison to
Autoencoders and Learned Decoders"): four 3x3 convolutions (64, 96, 128, 256 channels), a fully
connected layer to a code of the face model's size, and four 4x4 deconvolutions (128, 96, 64, 3),
trained on the same images with an image reconstruction loss. Its code has the 3DMM code's size but
no meaning: that is the point of the comparison.

The paper gives the layer list only; the rest is ours: stride 2 in every (de)convolution (so H and W
must be multiples of 16; 240 -> 15 x 15 at the bottleneck), ReLU between layers, a fully connected
layer back from the code to the 256-channel map, a sigmoid on the output (colours in [0, 1]), Adam.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mofa import io
from mofa.config import schema_default
from mofa.errors import MofaError
from mofa.training.trainer import load_checkpoint

log = logging.getLogger(__name__)

ENCODER_CHANNELS = (64, 96, 128, 256)
DECODER_CHANNELS = (128, 96, 64, 3)
DOWNSAMPLING = 2 ** len(ENCODER_CHANNELS)  # four stride-2 stages

ReconstructionLoss = Literal["l1", "l2"]


def code_size_of(code_size) -> int:
    """An integer, or anything with an integer `.size` (a CodeLayout) or `.code_size` (a Decoder)."""
    for attribute in ("code_size", "size"):
        value = getattr(code_size, attribute, None)
        if isinstance(value, int):
            return value
    if isinstance(code_size, int) and code_size > 0:
        return code_size
    raise ValueError(f"code size must be a positive integer or a CodeLayout, got {code_size!r}")


def bottleneck_side(image_size: int) -> int:
    """Side of the 256-channel map for a square image of `image_size` px (a multiple of 16)."""
    if image_size <= 0 or image_size % DOWNSAMPLING:
        raise ValueError(f"image size must be a positive multiple of {DOWNSAMPLING} (four stride-2 stages), "
                         f"got {image_size}; e.g. 240 (15 x 15 bottleneck) or 112 (7 x 7)")
    return image_size // DOWNSAMPLING


@contextlib.contextmanager
def seeded(seed: int | None):
    """Weights initialised from `seed` without touching the caller's global RNG (no-op for None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class ConvImageDecoder(nn.Module):
    """Code (B, D) -> image (B, 3, S, S) in [0, 1]: a fully connected layer to a 256 x S/16 x S/16 map,
    then four 4x4 stride-2 transposed convolutions (128, 96, 64, 3 channels; padding 1), ReLU between,
    sigmoid out. The decoder half of the conv autoencoder, and the paper's learned decoder (Fig. 13)."""

    def __init__(self, code_size, image_size: int):
        super().__init__()
        self.code_size = code_size_of(code_size)
        self.image_size = image_size
        self.side = bottleneck_side(image_size)
        self.fc = nn.Linear(self.code_size, ENCODER_CHANNELS[-1] * self.side ** 2)
        layers: list[nn.Module] = []
        channels = ENCODER_CHANNELS[-1]
        for i, out in enumerate(DECODER_CHANNELS):
            layers.append(nn.ConvTranspose2d(channels, out, kernel_size=4, stride=2, padding=1))
            layers.append(nn.ReLU(inplace=True) if i + 1 < len(DECODER_CHANNELS) else nn.Sigmoid())
            channels = out
        self.deconv = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        if code.shape[-1] != self.code_size:
            raise ValueError(f"code has {code.shape[-1]} entries, this decoder takes {self.code_size}")
        features = F.relu(self.fc(code)).view(-1, ENCODER_CHANNELS[-1], self.side, self.side)
        return self.deconv(features)


class ConvAutoencoder(nn.Module):
    """Image (B, 3, S, S) in [0, 1] -> code (B, D) -> image (B, 3, S, S).

    code_size: int or CodeLayout (the face model's code size, so both autoencoders have the same
    bottleneck); image_size: S, a multiple of 16; seed: initialise the weights from this seed.
    """

    def __init__(self, code_size, image_size: int = 240, seed: int | None = None):
        super().__init__()
        self.code_size = code_size_of(code_size)
        self.image_size = image_size
        side = bottleneck_side(image_size)
        with seeded(seed):
            layers: list[nn.Module] = []
            channels = 3
            for out in ENCODER_CHANNELS:
                layers += [nn.Conv2d(channels, out, kernel_size=3, stride=2, padding=1), nn.ReLU(inplace=True)]
                channels = out
            self.conv = nn.Sequential(*layers)
            self.fc = nn.Linear(channels * side ** 2, self.code_size)
            self.decoder = ConvImageDecoder(self.code_size, image_size)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) -> codes (B, D)."""
        if tuple(images.shape[-3:]) != (3, self.image_size, self.image_size):
            raise ValueError(f"images are {tuple(images.shape[1:])}, this autoencoder takes "
                             f"(3, {self.image_size}, {self.image_size}): resize them (see `fit_size`)")
        return self.fc(self.conv(images).flatten(1))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, D) -> images (B, 3, S, S) in [0, 1]."""
        return self.decoder(codes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))


# -- training ---------------------------------------------------------------------------------------

def fit_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """images (B, C, H, W) -> (B, C, size, size), area-resampled when the size differs."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="area")


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, kind: ReconstructionLoss = "l2",
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean per-pixel, per-channel l1 (absolute) or l2 (squared) error, scalar; mask: (B, H, W) bool
    restricts the mean to those pixels."""
    if kind == "l1":
        error = (pred - target).abs()
    elif kind == "l2":
        error = (pred - target) ** 2
    else:
        raise ValueError(f"reconstruction loss must be 'l1' or 'l2', got {kind!r}")
    if mask is None:
        return error.mean()
    weights = mask[:, None].to(error).expand_as(error)
    return (error * weights).sum() / weights.sum().clamp_min(1.0)


def source_size(source) -> int:
    """Number of samples in a source: a tensor, a tuple of tensors, or a SyntheticSet-like object."""
    if isinstance(source, torch.Tensor):
        return source.shape[0]
    if isinstance(source, (tuple, list)):
        return source[0].shape[0]
    return len(source)


def draw(source, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """A batch from a source: a tensor of images (N, 3, H, W) -> {"images"}; a tuple (codes, images)
    or (codes, images, masks) -> those keys; an object with `batch(indices)` (mofa.data.synthetic.
    SyntheticSet) -> its dict ("images", "codes", ...)."""
    if isinstance(source, torch.Tensor):
        return {"images": source[indices]}
    if isinstance(source, (tuple, list)):
        names = ("codes", "images", "masks")[: len(source)]
        return {name: value[indices] for name, value in zip(names, source)}
    return source.batch(indices.tolist())


def train_adam(model: torch.nn.Module, source, batch_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
               iterations: int, batch_size: int, lr: float, seed: int, device: torch.device,
               checkpoint: Path | None = None,
               checkpoint_every: int = schema_default("training", "checkpoint_every")) -> list[float]:
    """Adam on batches of `batch_size` samples drawn at random (seeded) from `source` (see `draw`);
    batch_loss(batch) -> scalar loss of the model on one batch. Leaves the model in eval mode; returns
    the loss of every iteration.

    With `checkpoint`, the model, optimiser, sampler state and losses are written there (atomically)
    every `checkpoint_every` iterations and at the end, and a run that finds a checkpoint of the same
    settings continues from it to the same weights and losses as an uninterrupted run; one of other
    settings is refused with a MofaError, as the encoders' trainer does (a stage empties its run folder
    first when its config, data or code changed: `mofa.training.runs.prepare_run_dir`)."""
    model.to(device).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    n = source_size(source)
    settings = {"iterations": iterations, "batch_size": batch_size, "lr": lr, "seed": seed, "samples": n,
                "parameters": sum(p.numel() for p in model.parameters())}
    losses: list[float] = []
    if checkpoint is not None and Path(checkpoint).exists():
        state = load_checkpoint(Path(checkpoint))
        if state.get("settings") == settings:
            model.load_state_dict(state["model"])
            optimiser.load_state_dict(state["optimiser"])
            generator.set_state(state["generator"])
            losses = list(state["losses"])
            log.info("%s: resuming from iteration %d of %d", checkpoint, len(losses), iterations)
        else:
            raise MofaError(f"{checkpoint}: was written with other training settings ({state.get('settings')}, "
                            f"now {settings}); delete it to start over")

    def save() -> None:
        io.torch_save({"settings": settings, "model": model.state_dict(), "optimiser": optimiser.state_dict(),
                       "generator": generator.get_state(), "losses": losses}, checkpoint)

    for it in range(len(losses), iterations):
        value = batch_loss(draw(source, torch.randint(n, (batch_size,), generator=generator)))
        optimiser.zero_grad(set_to_none=True)
        value.backward()
        optimiser.step()
        losses.append(float(value.detach()))
        if checkpoint is not None and ((it + 1) % checkpoint_every == 0 or it + 1 == iterations):
            save()
    model.eval()
    return losses


def train_conv_autoencoder(model: ConvAutoencoder, images_source, iterations: int, batch_size: int = 32,
                           lr: float = 1e-3, seed: int = 0, loss: ReconstructionLoss = "l2",
                           device: str | torch.device = "cpu", checkpoint: Path | None = None,
                           checkpoint_every: int = schema_default("training", "checkpoint_every")) -> list[float]:
    """Train the autoencoder on images drawn at random (seeded) from `images_source` (see `draw`;
    images are resized to the model's size) with Adam; returns the loss of every iteration. With
    `checkpoint`, resumable (`train_adam`)."""
    device = torch.device(device)

    def batch_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        images = fit_size(batch["images"].to(device).float(), model.image_size)
        return reconstruction_loss(model(images), images, loss)

    return train_adam(model, images_source, batch_loss, iterations, batch_size, lr, seed, device,
                      checkpoint, checkpoint_every)
