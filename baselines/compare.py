"""What the learned baselines' comparisons (E5: conv autoencoder, Fig. 12; E6: learned decoder,
Fig. 13) share: the face region of synthetic ground truth, images and regions at the resolution a
learned network works at, and a training source that carries the face region with each image.

The region is decided at the camera's resolution (ray-cast masks of the training face region) and
carried to a network's S x S output by area resampling: a pixel of the S x S image is in the region
when its whole footprint is (so no pixel mixes face and background).
"""
from __future__ import annotations

import numpy as np
import torch

from baselines.conv_autoencoder import fit_size

FULL = 1.0 - 1e-6  # area coverage above which a resampled pixel counts as wholly inside a region


def face_masks(decoder, codes: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Pixels covered by the decoded faces (the decoder's region, back faces culled), at the decoder
    camera's size. codes (B, D) -> (B, H, W) bool."""
    from mofa.training.evaluate import render_estimates

    size = decoder.camera.image_size
    masks = []
    for lo in range(0, len(codes), batch_size):
        chunk = codes[lo:lo + batch_size]
        _, mask = render_estimates(decoder, chunk, torch.zeros(len(chunk), 3, size, size))
        masks.append(torch.from_numpy(mask))
    return torch.cat(masks) if masks else torch.zeros(0, size, size, dtype=torch.bool)


def region_at(mask: torch.Tensor, size: int) -> torch.Tensor:
    """A region carried to another resolution: mask (B, H, W) bool -> (B, size, size) bool, the
    pixels whose footprint lies wholly inside the mask (area resampling)."""
    if mask.shape[-1] == size and mask.shape[-2] == size:
        return mask.bool()
    return fit_size(mask[:, None].float(), size)[:, 0] >= FULL


def images_at(images: torch.Tensor, size: int) -> torch.Tensor:
    """images (B, 3, H, W) -> (B, 3, size, size) float, area-resampled (as the networks see them)."""
    return fit_size(images.float(), size)


def channels_last(images: torch.Tensor) -> np.ndarray:
    """images (B, 3, H, W) -> (B, H, W, 3) float32 numpy, as mofa.metrics and the figures take them."""
    return images.detach().permute(0, 2, 3, 1).cpu().numpy().astype(np.float32)


def paste_region(pred: np.ndarray, target: np.ndarray, region: np.ndarray) -> np.ndarray:
    """pred inside the region, target elsewhere: a windowed measure (SSIM) then sees only the region's
    differences, whatever a method puts around it. pred, target: (B, H, W, 3); region: (B, H, W) bool."""
    return np.where(region[..., None], pred, target)


def parameter_count(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


class WithFaceRegion:
    """A synthetic split (mofa.data.synthetic.SyntheticSet) whose batches also carry each image's face
    region, for a loss restricted to it (baselines.learned_decoder.train_learned_decoder).

    split: the SyntheticSet; masks: (N, S, S) bool, the region of its first N images at the network's
    size S. batch(indices) -> {"codes" (B, D), "images" (B, 3, H, W), "masks" (B, S, S)}.
    """

    def __init__(self, split, masks: torch.Tensor):
        if len(masks) > len(split):
            raise ValueError(f"{len(masks)} masks for a split of {len(split)} images")
        self.split, self.masks = split, masks.bool()

    def __len__(self) -> int:
        return len(self.masks)

    def batch(self, indices) -> dict[str, torch.Tensor]:
        indices = np.asarray(indices)
        batch = self.split.batch(indices)
        return {"codes": batch["codes"], "images": batch["images"], "masks": self.masks[torch.from_numpy(indices)]}
