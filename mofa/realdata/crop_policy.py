"""How a detected face box becomes the encoder's crop: one policy for training-data preparation
(mofa.realdata.prepare), the benchmark crops (mofa.realdata.benchmark_crops) and `mofa reconstruct`."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from mofa.realdata.detect import CropWindow

if TYPE_CHECKING:
    from mofa.settings import Settings


@dataclasses.dataclass(frozen=True)
class CropPolicy:
    """The square of side max(w, h) * (1 + 2 margin) centred on a face box (x, y, w, h), resampled to
    image_size px; a box whose longer side is under min_face_px (image px) is too small (upsampled
    that far, it is mostly blur). From the settings: real_data.margin, real_data.min_face_px and
    camera.image_size (margin 0.4 gives faces the size of the synthetic data's)."""
    margin: float
    min_face_px: int
    image_size: int

    @classmethod
    def from_settings(cls, settings: "Settings") -> "CropPolicy":
        return cls(float(settings.real_data.margin), int(settings.real_data.min_face_px), int(settings.camera.image_size))

    @classmethod
    def schema_default(cls) -> "CropPolicy":
        """The policy of the schema's defaults (for tools run without a config)."""
        from mofa.config import schema_default
        return cls(float(schema_default("real_data", "margin")), int(schema_default("real_data", "min_face_px")),
                   int(schema_default("camera", "image_size")))

    @property
    def haar_min_px(self) -> int:
        """The smallest Haar window searched (image px): half the smallest face kept, at least the
        cascade's 24 px, so that a face near min_face_px is found and then judged by its box."""
        return max(24, self.min_face_px // 2)

    def window(self, box) -> CropWindow:
        return CropWindow.around(box, self.margin, self.image_size)

    def too_small(self, box) -> str | None:
        """Why the box (x, y, w, h) is too small to crop, or None."""
        side = max(float(box[2]), float(box[3]))
        return f"face box {side:.0f} px < {self.min_face_px} px" if side < self.min_face_px else None
