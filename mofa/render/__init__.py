"""Image rendering of posed, coloured face meshes (z-buffer ray casting)."""
from mofa.render.raycast import Rendered, render, render_batch, shaded_geometry_colours

__all__ = ["Rendered", "render", "render_batch", "shaded_geometry_colours"]
