"""Reading real photographs and video frames as 3-channel 8-bit RGB.

Images are read with cv2.imread(IMREAD_UNCHANGED) so that the conversion is ours and explicit:
greyscale is replicated, alpha is dropped, 16-bit is scaled by 1/257 (65535 -> 255), floats are
taken as [0, 1]. A still's EXIF orientation (a phone photo taken upright is stored sideways with
orientation 6 or 8) is applied, so that faces stand as the photo is shown; the corpora here carry none.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")  # stills read here


class UnreadableImage(Exception):
    """The file is missing, or neither OpenCV's image nor its video decoder can read it."""


EXIF_ORIENTATION = 0x0112


def check_complete(path: str | Path) -> int:
    """After OpenCV has decoded the file: its EXIF orientation (1-8; 1 where it has none); UnreadableImage
    when Pillow knows the file's format but cannot decode all of it: OpenCV decodes a truncated JPEG
    without an error (the missing rows come out grey). Formats Pillow does not know pass, as orientation 1."""
    from PIL import Image, UnidentifiedImageError

    bomb_limit = Image.MAX_IMAGE_PIXELS  # a large photo (12000 x 9000) is no decompression bomb here: OpenCV
    Image.MAX_IMAGE_PIXELS = None        # has decoded it already, under its own limit (CV_IO_MAX_IMAGE_PIXELS)
    try:
        with Image.open(path) as image:
            image.load()
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except UnidentifiedImageError:
        return 1
    except (OSError, SyntaxError, ValueError) as exc:
        raise UnreadableImage(f"not a readable image (truncated or corrupt: {exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    return orientation if orientation in range(1, 9) else 1


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, ...) stored pixels -> as shown, for EXIF orientation 1-8 (2: mirrored; 3: upside down;
    4: flipped; 5: transposed; 6: stored turned 90 deg anticlockwise; 7: transversed; 8: turned clockwise)."""
    turned = {1: pixels, 2: pixels[:, ::-1], 3: pixels[::-1, ::-1], 4: pixels[::-1],
              5: np.swapaxes(pixels, 0, 1), 6: np.rot90(pixels, -1), 7: np.swapaxes(pixels, 0, 1)[::-1, ::-1],
              8: np.rot90(pixels, 1)}[orientation]
    return np.ascontiguousarray(turned)


def to_rgb8(pixels: np.ndarray) -> np.ndarray:
    """An array as OpenCV decodes it -- (H, W) grey, (H, W, 1), (H, W, 3) BGR or (H, W, 4) BGRA; uint8,
    uint16 or float -- -> (H, W, 3) uint8 RGB."""
    if pixels.dtype == np.uint16:
        pixels = np.rint(pixels / 257.0).astype(np.uint8)
    elif pixels.dtype.kind == "f":
        pixels = np.clip(np.rint(np.nan_to_num(pixels) * 255.0), 0, 255).astype(np.uint8)
    elif pixels.dtype != np.uint8:
        raise UnreadableImage(f"unsupported pixel type {pixels.dtype}")
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
        raise UnreadableImage(f"unsupported image shape {pixels.shape}")
    code = cv2.COLOR_BGRA2RGB if pixels.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(np.ascontiguousarray(pixels), code)


class FrameReader:
    """Reads still images and video frames; keeps the last video open, so that reading a clip's
    frames in order decodes each frame once."""

    def __init__(self):
        self._video_path: Path | None = None
        self._capture: cv2.VideoCapture | None = None
        self._next_frame = 0

    def read(self, path: str | Path, frame_index: int | None = None) -> np.ndarray:
        """(H, W, 3) uint8 RGB of an image file, or of frame `frame_index` (0-based) of a video."""
        path = Path(path)
        if not path.is_file():
            raise UnreadableImage(f"a broken link (to {os.readlink(path)})" if path.is_symlink() and not path.exists()
                                  else "not a regular file" if path.exists() else "no such file")
        if frame_index is None:
            from mofa.realdata.detect import native_stderr_silenced
            with native_stderr_silenced():  # libjpeg's 'Premature end of JPEG file', libpng's warnings
                pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if pixels is None or pixels.size == 0:
                raise UnreadableImage("not a readable image (corrupt, truncated or not an image format)")
            orientation = check_complete(path)  # OpenCV fills a truncated JPEG's missing part with grey
            return apply_orientation(to_rgb8(pixels), orientation)
        return to_rgb8(self._frame(path, frame_index))

    def _frame(self, path: Path, frame_index: int) -> np.ndarray:
        if self._video_path != path or self._capture is None:
            self.close()
            self._capture = cv2.VideoCapture(str(path))
            self._video_path, self._next_frame = path, 0
            if not self._capture.isOpened():
                self.close()
                raise UnreadableImage("OpenCV cannot open the video")
        if frame_index != self._next_frame:
            if frame_index > self._next_frame and frame_index - self._next_frame < 64:
                while self._next_frame < frame_index:  # decoding forward is exact; seeking may not be
                    if not self._capture.grab():
                        raise UnreadableImage(f"the video ends before frame {frame_index}")
                    self._next_frame += 1
            else:
                self._capture.set(cv2.CAP_PROP_POS_FRAMES, frame_index)
                self._next_frame = frame_index
        ok, pixels = self._capture.read()
        if not ok or pixels is None:
            self._next_frame = -1  # position unknown: seek next time
            raise UnreadableImage(f"cannot decode frame {frame_index} of the video")
        self._next_frame += 1
        return pixels

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
        self._capture, self._video_path = None, None

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
