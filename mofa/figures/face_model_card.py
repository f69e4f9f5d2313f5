"""Face-model card figure: the mean face and the +-3 standard-deviation faces of the first modes."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mofa.decoder import Decoder, PinholeCamera
from mofa.io import atomic_path
from mofa.render.raycast import render

SIGMAS = (-3.0, 3.0)
BASES = (("shape", "shape (identity) mode 1"),
         ("expression", "expression mode 1"),
         ("reflectance", "reflectance mode 1"))
BACKGROUND = 1.0  # white behind the faces


def model_card_codes(layout) -> tuple[torch.Tensor, list[tuple[int, int, str]]]:
    """Codes for the card: the mean face (row 0, column 1), then for each basis with modes its first
    mode at -3 sd (column 0) and +3 sd (column 2), one row per basis. Returns (K, layout.size) codes
    and a (row, column, title) panel per code. Pose, translation and light are zero: frontal,
    centred, ambient-lit."""
    sizes = layout.sizes
    codes = [layout.join(shape=torch.zeros(1, sizes["shape"]))]
    panels = [(0, 1, "mean face")]
    row = 1
    for part, title in BASES:
        if sizes[part] == 0:
            continue
        for column, sigma in zip((0, 2), SIGMAS):
            entries = torch.zeros(1, sizes[part])
            entries[0, 0] = sigma
            codes.append(layout.join(**{part: entries}))
            panels.append((row, column, f"{title}: {sigma:+.0f} sd"))
        row += 1
    return torch.cat(codes), panels


def plot_face_model_card(model, camera: PinholeCamera, out_path: str | os.PathLike,
                         supersample: int = 2, metadata: Mapping[str, str] | None = None) -> Path:
    """Render the mean face and the -3 / +3 sd faces of the first shape, expression and reflectance
    modes (frontal, zero light: ambient only) in a grid; write a PNG atomically; return its path.

    The faces are drawn on the region images show (`FaceModel.drawn`). Rows: mean; shape; expression; reflectance (columns -3 sd, mean, +3 sd).
    """
    out_path = Path(out_path)
    drawn = model.drawn()
    decoder = Decoder(drawn, camera)
    codes, panels = model_card_codes(decoder.layout)
    with torch.no_grad():
        decoded = decoder(codes)
    background = np.full((camera.image_size, camera.image_size, 3), BACKGROUND, dtype=np.float32)
    images = [render(decoded.vertices[k], drawn.triangles, decoded.colours[k], camera,
                     background=background, supersample=supersample).image
              for k in range(len(codes))]

    n_rows = 1 + max(row for row, _, _ in panels)
    fig = Figure(figsize=(3 * 2.4, n_rows * 2.6 + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, 3, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    # Mean face alone in the first row's middle; each mode row: -3 sd, mean, +3 sd.
    for k, (row, column, title) in enumerate(panels):
        axes[row, column].imshow(np.clip(images[k], 0, 1))
        axes[row, column].set_title(title, fontsize=8)
        if row > 0:
            axes[row, 1].imshow(np.clip(images[0], 0, 1))
            axes[row, 1].set_title("mean", fontsize=8)
    region = next((r for r in ("face_head", "full_face") if r in model.regions), "whole model")
    fig.suptitle(f"{model.name}: {model.n_vertices} vertices, {model.n_shape} shape / "
                 f"{model.n_expression} expression / {model.n_reflectance} reflectance modes\n"
                 f"drawn: {region} ({drawn.n_vertices} vertices), frontal, ambient light", fontsize=9)
    fig.tight_layout()

    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, format="png", metadata=dict(metadata or {}))
    return out_path
