"""Qualitative grids (E8, paper Figs. 2, 4-6): for each photo the input, the reconstruction rendered over
it, the shaded geometry, the reflectance, and the estimated illumination shown on a sphere."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mofa.decoder.lighting import shade  # noqa: E402
from mofa.figures.curves import save_figure  # noqa: E402
from mofa.render.raycast import render, shaded_geometry_colours  # noqa: E402

COLUMNS = ("input", "overlay", "shaded geometry", "reflectance", "light")
BACKGROUND = 1.0  # white behind the geometry and reflectance panels
LIGHT_BACKGROUND = 0.15  # dark behind the light sphere, whose bright side may saturate to white


def light_sphere(sh_coeffs, size: int, background: float = LIGHT_BACKGROUND) -> np.ndarray:
    """The irradiance of SH light on a unit sphere seen by the camera (orthographically), one normal
    per pixel. sh_coeffs: (3, 9) with the ambient offset (DecodedFace.sh_coeffs[b]) -> (size, size, 3)
    in [0, 1]. Camera space: x right, y down, the visible hemisphere's normals have z < 0."""
    coords = (np.arange(size) + 0.5) / size * 2.0 - 1.0  # pixel centres in [-1, 1]
    x, y = np.meshgrid(coords, coords)
    inside = x * x + y * y < 1.0
    normals = np.stack([x, y, -np.sqrt(np.clip(1.0 - x * x - y * y, 0.0, None))], -1)
    sh = torch.as_tensor(np.asarray(sh_coeffs, dtype=np.float32))[None]
    irradiance = shade(torch.as_tensor(normals[inside], dtype=torch.float32)[None], sh)[0].numpy()
    out = np.full((size, size, 3), background, dtype=np.float32)
    out[inside] = np.clip(irradiance, 0.0, 1.0)
    return out


def reconstruction_panels(decoder, codes: torch.Tensor, images: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """codes (B, D), images (B, 3, H, W) in [0, 1] (H = W = the decoder camera's image size) ->
    one dict per image: COLUMNS -> (H, W, 3) float in [0, 1]."""
    with torch.no_grad():
        decoded = decoder(codes.to(decoder.mean_shape.device))
    tris = decoder.triangles.cpu().numpy()
    size = decoder.camera.image_size
    white = np.full((size, size, 3), BACKGROUND, dtype=np.float32)
    panels = []
    for b in range(len(codes)):
        verts = decoded.vertices[b].cpu().numpy()
        photo = images[b].permute(1, 2, 0).cpu().numpy().astype(np.float32)
        def draw(colours, bg, verts=verts):
            return render(verts, tris, colours, decoder.camera, bg, cull_back_faces=True).image

        panels.append({
            "input": photo,
            "overlay": draw(decoded.colours[b].clamp(0, 1).cpu().numpy(), photo),
            "shaded geometry": draw(shaded_geometry_colours(decoded.normals[b].cpu().numpy()), white),
            "reflectance": draw(decoded.reflectance[b].clamp(0, 1).cpu().numpy(), white),
            "light": light_sphere(decoded.sh_coeffs[b].cpu().numpy(), size),
        })
    return panels


def plot_grid(panels: list[dict[str, np.ndarray]], out_path: str | Path, title: str,
              row_labels: list[str] | None = None, cell_inches: float = 1.5,
              metadata: Mapping[str, str] | None = None, columns: Sequence[str] = COLUMNS) -> Path:
    """Rows = photos, `columns` = the keys of each row's panels shown, left to right, titled by the
    key (default COLUMNS); panels of different sizes fill the same cell. Saved as PNG."""
    rows = max(1, len(panels))
    fig, axes = plt.subplots(rows, len(columns), figsize=(cell_inches * len(columns), cell_inches * rows + 0.4),
                             squeeze=False)
    for r, row in enumerate(panels):
        for c, column in enumerate(columns):
            axes[r][c].imshow(np.clip(row[column], 0.0, 1.0), interpolation="bilinear")
    for r in range(rows):
        for c, column in enumerate(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(column, fontsize=8)
        if row_labels and r < len(row_labels):
            axes[r][0].set_ylabel(row_labels[r], fontsize=6)
    height = cell_inches * rows + 0.4
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height))  # keep the title clear of the column titles
    return save_figure(fig, out_path, dpi=100, metadata=metadata)
