"""The code regressor that replaces a network's last layer, and the `Encoder` base class.

MoFA (Tewari et al. 2017, Sec. 7) takes AlexNet or VGG-Face and replaces the last fully connected layer
by one with (code size) outputs. Here that layer is `CodeHead`:

- zero-initialised weights and bias, so an untrained encoder outputs exactly the zero code: the mean
  face, frontal, centred, ambient-lit (DESIGN.md section 1);
- the z-translation entry comes from its own 1-output `Linear`. The paper trains it with learning rate
  0.0005 instead of 0.1. AdaDelta's step does not depend on the gradient's scale, so scaling one output
  cannot emulate a per-entry learning rate: the entry needs its own parameters in its own optimiser
  group (`Encoder.parameter_groups`);
- optionally the rotation entries are bounded: `bound * tanh(x / bound)`. This is a remedy for a measured
  collapse (DESIGN.md section 8: under photometric-only training the face pitched away from the camera).
  tanh is the identity near zero, so the zero initialisation stays exact.
"""
from __future__ import annotations

import torch
from torch import nn

from mofa.decoder.layout import CodeLayout
from mofa.errors import MofaError

# ImageNet statistics of torchvision's pre-trained weights, for images in [0, 1], RGB.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CodeHead(nn.Module):
    """(B, in_features) -> (B, layout.size) code, zero at initialisation.

    `others` produces every code entry except z-translation, in code order; `z_translation` produces
    that one entry; forward interleaves them back into code order."""

    def __init__(self, in_features: int, layout: CodeLayout, rotation_bound_rad: float | None = None):
        super().__init__()
        if rotation_bound_rad is not None and not rotation_bound_rad > 0:
            raise MofaError(f"rotation_bound_rad must be a positive angle in radians or null, "
                            f"got {rotation_bound_rad}")
        self.layout = layout
        self.z_index = layout.slices["translation"].start + 2
        self.rotation_bound_rad = None if rotation_bound_rad is None else float(rotation_bound_rad)
        self.others = nn.Linear(in_features, layout.size - 1)
        self.z_translation = nn.Linear(in_features, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Zero weights and biases: the initial code is exactly zero."""
        for linear in (self.others, self.z_translation):
            nn.init.zeros_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        rest = self.others(features)
        z = self.z_index
        code = torch.cat([rest[:, :z], self.z_translation(features), rest[:, z:]], dim=1)
        if self.rotation_bound_rad is not None:
            rot, bound = self.layout.slices["rotation"], self.rotation_bound_rad
            bounded = bound * torch.tanh(code[:, rot] / bound)
            code = torch.cat([code[:, :rot.start], bounded, code[:, rot.stop:]], dim=1)
        return code


class Encoder(nn.Module):
    """images (B, 3, H, W) linear RGB in [0, 1] -> code (B, layout.size).

    Normalisation for the backbone's pre-trained weights happens inside (`normalise`), so callers
    always pass [0, 1] images. A subclass builds its backbone, puts a `CodeHead` at the state-dict prefix
    `head_prefix`, and implements `embed` (normalised images -> the head's input features).
    `pretrained` and `init_description` say how the backbone was initialised, for results to report."""

    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN  # in [0, 1] units, RGB
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    min_input_size: int = 1  # smallest H and W the backbone accepts
    head_prefix: str = "head"  # state-dict prefix of the CodeHead; pre-trained keys under it are dropped

    def __init__(self, layout: CodeLayout):
        super().__init__()
        self.layout = layout
        self.register_buffer("mean", torch.tensor(self.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.pixel_std).view(1, 3, 1, 1), persistent=False)
        self.pretrained = False
        self.init_description = "random init, no pre-trained weights"

    @property
    def code_head(self) -> CodeHead:
        """The CodeHead module (at `head_prefix`)."""
        return self.get_submodule(self.head_prefix)

    @staticmethod
    def adapt_state_dict(state: dict) -> dict:
        """Rename a pre-trained state dict's keys to this encoder's names (identity by default)."""
        return state

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> the backbone's input scale."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise MofaError(f"{type(self).__name__} expects images (B, 3, H, W), got {tuple(images.shape)}")
        if min(images.shape[-2:]) < self.min_input_size:
            raise MofaError(f"{type(self).__name__} needs images of at least {self.min_input_size}x"
                            f"{self.min_input_size} pixels, got {images.shape[-2]}x{images.shape[-1]}: "
                            f"raise the crop size")
        return (images - self.mean) / self.std

    def embed(self, normalised: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> (B, F) features fed to the head."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.code_head(self.embed(self.normalise(images)))

    @property
    def needs_calibration(self) -> bool:
        """Whether `calibrate` still has data-dependent buffers to set (False by default)."""
        return False

    def calibrate(self, images: torch.Tensor) -> None:
        """Called by the trainer once, before a run's first step, while `needs_calibration`: with its
        first training images (B, 3, H, W) in [0, 1] at the input size, an encoder with data-dependent
        buffers sets them here (state it keeps in its state dict)."""

    def parameter_groups(self, lr: float, lr_z: float, backbone_lr_scale: float = 1.0) -> list[dict]:
        """Optimiser parameter groups: the code head at `lr`, its z-translation output's own weights and
        bias at `lr_z` (paper: AdaDelta 0.1 and 0.0005), and the backbone (everything outside the head)
        at `backbone_lr_scale * lr` (1 in the paper; below 1 keeps pre-trained features)."""
        z_params = list(self.code_head.z_translation.parameters())
        z_ids = {id(p) for p in z_params}
        head_ids = {id(p) for p in self.code_head.parameters()}
        head = [p for p in self.code_head.parameters() if id(p) not in z_ids]
        backbone = [p for p in self.parameters() if id(p) not in head_ids]
        groups = [{"params": backbone, "lr": lr * backbone_lr_scale, "name": "backbone"},
                  {"params": head, "lr": lr, "name": "head"},
                  {"params": z_params, "lr": lr_z, "name": "z_translation"}]
        return [g for g in groups if g["params"]]
