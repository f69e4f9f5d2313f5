"""Synthetic ground truth: random codes of the face model rendered over augmented backgrounds.

On-disk format of one split (a folder, written under `<folder>.partial` and renamed when complete):
  manifest.json          seed, counts, code layout, camera, face model, code distribution, timing
  samples.csv            index, yaw/pitch/roll (degrees), background kind, active blendshapes
  images.npy             (N, H, W, 3) uint8 sRGB-less linear RGB * 255
  codes.npy              (N, D) float32 ground-truth codes (layout in the manifest)
  landmarks.npy          (N, 68, 2) float32 pixels, iBUG order (projected model landmark vertices)
  landmark_visible.npy   (N, 68) bool, not self-occluded and inside the image
  vertices.npy           (N, Nr, 3) float32 camera-space mm of the training face region
Sample i of a split draws its code from `numpy.random.default_rng([seed, split_id, i])` and its
background and pixel noise from `default_rng([seed, split_id, i, 1])`, so the data are the same
whatever the batch size, the number of worker processes or interruption.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mofa.config import schema_default, schema_section_defaults
from mofa.data.backgrounds import background_kinds, list_images, sample_background
from mofa.decoder import AMBIENT_OFFSET, Decoder, PinholeCamera
from mofa.decoder.layout import CodeLayout
from mofa.errors import MofaError
from mofa.facemodel.model import FaceModel
from mofa.io import atomic_dir, load_npy, read_json
from mofa.render.raycast import render

if TYPE_CHECKING:
    from mofa.settings import SyntheticSettings

log = logging.getLogger(__name__)
SPLIT_IDS = {"train": 0, "test": 1}
FORMAT_VERSION = 1
ARRAYS = ("images", "codes", "landmarks", "landmark_visible", "vertices")


def _default(*keys: str):
    """The schema's default of synthetic.<keys>, for the defaults below (defined once, in the schema)."""
    return schema_default("synthetic", *keys)


@dataclasses.dataclass(frozen=True)
class CodeDistribution:
    """How synthetic codes are drawn (angles in degrees, translation in code units).

    Shape and reflectance: N(0, 1) priors. Expression: `blendshapes` (min, max) active blendshapes of
    the model's own, weights U(0, blendshape_weight_max), mapped into the expression basis; a model
    without blendshapes gets N(0, 0.5^2) on its first 10 modes. Pose: yaw U(-yaw, yaw), pitch and
    roll normal, clipped at two standard deviations. Light: mostly white (one SH vector shared by the
    channels) with mild per-channel colour, around the decoder's ambient offset.
    """
    yaw_deg: float = _default("distribution", "yaw_deg")
    pitch_std_deg: float = _default("distribution", "pitch_std_deg")
    roll_std_deg: float = _default("distribution", "roll_std_deg")
    translation_xy_std: float = _default("distribution", "translation_xy_std")
    translation_z_std: float = _default("distribution", "translation_z_std")
    blendshapes: tuple[int, int] = tuple(_default("distribution", "blendshapes"))
    blendshape_weight_max: float = _default("distribution", "blendshape_weight_max")
    light_ambient_std: float = _default("distribution", "light_ambient_std")
    light_directional_std: float = _default("distribution", "light_directional_std")
    light_colour_std: float = _default("distribution", "light_colour_std")

    @classmethod
    def from_config(cls, section: Mapping) -> "CodeDistribution":
        """From synthetic.distribution (validated: its keys are the fields)."""
        return cls(**{k: (tuple(v) if k == "blendshapes" else v) for k, v in section.items()})


def sample_code(rng: np.random.Generator, layout: CodeLayout, model: FaceModel,
                dist: CodeDistribution) -> tuple[np.ndarray, dict]:
    """One ground-truth code (D,) float32 and its description."""
    code = np.zeros(layout.size, np.float64)
    sl = layout.slices
    code[sl["shape"]] = rng.standard_normal(layout.n_shape)
    code[sl["reflectance"]] = rng.standard_normal(layout.n_reflectance)
    n_active = 0
    if layout.n_expression:
        examples = model.expression_examples
        if examples is not None and len(examples):
            n_active = int(rng.integers(dist.blendshapes[0], dist.blendshapes[1] + 1))
            chosen = rng.choice(len(examples), size=n_active, replace=False)
            weights = rng.uniform(0, dist.blendshape_weight_max, n_active)
            code[sl["expression"]] = weights @ examples[chosen] if n_active else 0.0
        else:
            k = min(10, layout.n_expression)
            code[sl["expression"]][:k] = 0.5 * rng.standard_normal(k)
    clipped = lambda std: float(np.clip(rng.normal(0, std), -2 * std, 2 * std))  # noqa: E731
    yaw, pitch, roll = rng.uniform(-dist.yaw_deg, dist.yaw_deg), clipped(dist.pitch_std_deg), clipped(dist.roll_std_deg)
    code[sl["rotation"]] = np.radians([pitch, yaw, roll])
    code[sl["translation"]] = [rng.normal(0, dist.translation_xy_std), rng.normal(0, dist.translation_xy_std),
                               rng.normal(0, dist.translation_z_std)]
    white = np.zeros(9)
    white[0] = np.clip(rng.normal(0, dist.light_ambient_std), -0.3, 0.45)
    white[1:4] = rng.normal(0, dist.light_directional_std, 3)
    white[4:] = rng.normal(0, 0.5 * dist.light_directional_std, 5)
    light = white[None, :] + rng.normal(0, dist.light_colour_std, (3, 9)) * np.r_[1.0, [0.5] * 8]
    code[sl["light"]] = light.reshape(-1)
    return code.astype(np.float32), {"yaw_deg": yaw, "pitch_deg": pitch, "roll_deg": roll,
                                      "blendshapes": n_active}


def _landmark_visibility(screen: np.ndarray, depth_z: np.ndarray, depth_image: np.ndarray,
                         tolerance_mm: float = 5.0) -> np.ndarray:
    """screen (68, 2) px, depth_z (68,) mm, depth_image (H, W) -> (68,) bool unoccluded and inside."""
    size = depth_image.shape[0]
    px = np.rint(screen).astype(int)
    inside = (px >= 0).all(1) & (px < size).all(1)
    visible = np.zeros(len(px), bool)
    u, v = px[inside, 0], px[inside, 1]
    visible[inside] = np.abs(depth_image[v, u] - depth_z[inside]) < tolerance_mm
    return visible


def _to_uint8(image: np.ndarray, rng: np.random.Generator, noise_std: float, out: np.ndarray) -> None:
    """Write image (H, W, 3) float32 in [0, 1], plus N(0, noise_std^2) pixel noise, into out (H, W, 3)
    uint8: rint(255 x) clipped to [0, 255]. The noise is the float64 of rng.normal(0, noise_std) (the
    same standard normals times noise_std), drawn into one buffer that the rest works in, in place."""
    if noise_std:
        pixels = rng.standard_normal(image.shape)
        pixels *= noise_std
        pixels += image
        pixels *= 255
    else:
        pixels = image * 255  # float32
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    out[...] = pixels


@dataclasses.dataclass(frozen=True)
class _SplitSpec:
    """What generating any sample of one split needs; picklable, sent once to each helper process.

    folder holds the split's preallocated arrays (ARRAYS, .npy); model is the render region's mesh and
    face_vertices (Nr,) the indices of the training face region in it; background_files: photos or None."""
    folder: Path
    seed: int
    split_id: int
    model: FaceModel
    face_vertices: np.ndarray
    camera: PinholeCamera
    dist: CodeDistribution
    ambient_offset: float
    background_mix: dict
    background_files: list | None
    supersample: int
    image_noise_std: float


class _SampleWriter:
    """Generates samples of a split straight into its memory-mapped arrays (one per process).

    Sample i draws its code from `default_rng([seed, split_id, i])` and its background, pixel noise
    and nothing else from `default_rng([seed, split_id, i, 1])`, and the decoder's output for one code
    does not depend on the other codes of its batch: the data do not depend on which process writes
    which samples, nor on the batch size. threads: Open3D's threads per image (0: all cores)."""

    def __init__(self, split: _SplitSpec, threads: int):
        self.split = split
        self.threads = threads
        self.decoder = Decoder(split.model, split.camera, ambient_offset=split.ambient_offset)
        self.triangles = np.ascontiguousarray(split.model.triangles, dtype=np.intp)
        self.arrays = {k: np.load(split.folder / f"{k}.npy", mmap_mode="r+") for k in ARRAYS}

    def write(self, lo: int, hi: int) -> list[dict]:
        """Samples lo..hi-1, decoded as one batch and rendered one by one; returns their samples.csv rows."""
        sp, arrays = self.split, self.arrays
        sampled = [sample_code(np.random.default_rng([sp.seed, sp.split_id, i]), self.decoder.layout, sp.model,
                               sp.dist) for i in range(lo, hi)]
        codes = np.stack([code for code, _ in sampled])
        with torch.no_grad():
            out = self.decoder(torch.from_numpy(codes))
        verts, colours = out.vertices.numpy(), out.colours.clamp(0, 1).numpy()
        landmarks = out.screen.numpy()[:, sp.model.landmarks]
        arrays["codes"][lo:hi] = codes
        arrays["landmarks"][lo:hi] = landmarks
        arrays["vertices"][lo:hi] = verts[:, sp.face_vertices]
        rows = []
        for j, (i, (_, description)) in enumerate(zip(range(lo, hi), sampled)):
            kind = self._render(i, verts[j], colours[j], landmarks[j])
            rows.append({"index": i, **description, "background": kind})
        return rows

    def _render(self, i: int, verts: np.ndarray, colours: np.ndarray, landmarks: np.ndarray) -> str:
        """Render sample i (verts, colours (N, 3), landmarks (68, 2) px) over its background into the
        images and landmark_visible arrays; returns the background kind."""
        sp = self.split
        rng = np.random.default_rng([sp.seed, sp.split_id, i, 1])
        background, kind = sample_background(rng, sp.camera.image_size, sp.background_mix, sp.background_files)
        shot = render(verts, self.triangles, colours, sp.camera, background, sp.supersample,
                      cull_back_faces=True, threads=self.threads)
        _to_uint8(shot.image, rng, sp.image_noise_std, out=self.arrays["images"][i])
        landmark_z = verts[sp.model.landmarks, 2]
        self.arrays["landmark_visible"][i] = _landmark_visibility(landmarks, landmark_z, shot.depth)
        return kind


def _claim(next_index, n: int, chunk: int) -> range:
    """The next `chunk` sample indices not yet claimed by any process (empty when none is left);
    next_index: a shared multiprocessing Value."""
    with next_index.get_lock():
        lo = next_index.value
        next_index.value = min(n, lo + chunk)
    return range(lo, min(n, lo + chunk))


def _write_claimed(writer: _SampleWriter, next_index, n: int, chunk: int):
    """Claim chunks and write them until none is left; yields each chunk's samples.csv rows."""
    while idx := _claim(next_index, n, chunk):
        yield writer.write(idx.start, idx.stop)


@contextlib.contextmanager
def _single_threaded():
    """torch and OpenCV on one thread each inside the body (processes that share the cores), then as before."""
    before = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])


def _helper(split: _SplitSpec, next_index, n: int, chunk: int, results) -> None:
    """A helper process: writes claimed chunks, putting each one's rows (or the error) on `results`."""
    try:
        with _single_threaded():
            for rows in _write_claimed(_SampleWriter(split, threads=1), next_index, n, chunk):
                results.put(rows)
    except MofaError as exc:  # a problem of the input: its one line
        results.put(MofaError(str(exc)))
    except BaseException:  # noqa: BLE001 - the main process re-raises it
        results.put(traceback.format_exc())


def _write_all(split: _SplitSpec, n: int, chunk: int, workers: int, bar) -> list[dict]:
    """Write samples 0..n-1 in chunks of `chunk` with `workers` processes, this one included; returns
    the samples.csv rows, by index. Every process claims the next chunk when done with its last, so
    nothing funnels through this process.

    Helpers are forked (they start in milliseconds; a spawned or forkserver helper first imports torch
    and Open3D, ~1.5 s, 4 % of the default preset's split) and run torch, OpenCV and Open3D on one
    thread each: the pattern of PyTorch's DataLoader workers, which is what makes forking a process
    that has used threaded torch safe."""
    ctx = multiprocessing.get_context("fork")
    next_index, results = ctx.Value("q", 0), ctx.Queue()
    helpers: list[multiprocessing.process.BaseProcess] = []
    rows: list[dict] = []

    def record(chunk_rows: list[dict]) -> None:
        rows.extend(chunk_rows)
        bar.update(len(chunk_rows))

    def helper_rows(wait: bool) -> list[dict]:
        """One helper chunk's rows, or [] when none is there (after a second if wait)."""
        try:
            got = results.get(timeout=1.0) if wait else results.get_nowait()
        except queue.Empty:
            if any(h.exitcode not in (None, 0) for h in helpers):
                raise MofaError("synthetic: a helper process died (out of memory?); set synthetic.workers: 1") from None
            return []
        if isinstance(got, MofaError):
            raise got
        if isinstance(got, str):
            raise RuntimeError(f"synthetic: a helper process failed (a bug):\n{got}")
        return got

    try:
        for _ in range(workers - 1):
            helpers.append(ctx.Process(target=_helper, args=(split, next_index, n, chunk, results), daemon=True))
            helpers[-1].start()
        with _single_threaded() if helpers else contextlib.nullcontext():
            for own in _write_claimed(_SampleWriter(split, threads=1 if helpers else 0), next_index, n, chunk):
                record(own)
                while not results.empty():
                    record(helper_rows(wait=False))
        while len(rows) < n:  # the helpers' last chunks
            record(helper_rows(wait=True))
    finally:
        for h in helpers:  # idle by now, or still starting when this process wrote everything
            h.terminate()
            h.join()
    return sorted(rows, key=lambda row: row["index"])


def generate_split(out_dir: str | Path, split: str, n: int, model: FaceModel, camera: PinholeCamera,
                   seed: int, dist: CodeDistribution, render_region: str = _default("render_region"),
                   background_mix: Mapping[str, float] | None = None, background_folder: str | None = None,
                   supersample: int = _default("supersample"), image_noise_std: float = _default("image_noise_std"),
                   batch_size: int = 32, workers: int = _default("workers"), progress: bool = True,
                   ambient_offset: float = AMBIENT_OFFSET) -> dict:
    """Render n samples of one split into out_dir/<split>; returns the manifest dict.

    batch_size: codes decoded together, the chunk a process claims at a time; workers: processes that
    generate samples, this one included (0: one per usable core; 1: this one alone, with every core for
    Open3D); neither changes the data. ambient_offset: the SH light's ambient offset (the config's light.ambient_offset,
    as the training decoder uses)."""
    if split not in SPLIT_IDS:
        raise MofaError(f"synthetic split must be one of {sorted(SPLIT_IDS)}, got '{split}'")
    final = Path(out_dir) / split
    with atomic_dir(final) as partial:  # no half-written split under the final name, none left on an error
        manifest = _generate_into(partial, split, n, model, camera, seed, dist, render_region, background_mix,
                                  background_folder, supersample, image_noise_std, batch_size, workers, progress,
                                  ambient_offset)
    log.info("synthetic %s: %d images in %.1f s (%.1f images/s) -> %s", split, n, manifest["seconds"],
             manifest["images_per_second"], final)
    return manifest


def _generate_into(partial: Path, split: str, n: int, model: FaceModel, camera: PinholeCamera, seed: int,
                   dist: CodeDistribution, render_region: str, background_mix: Mapping[str, float] | None,
                   background_folder: str | None, supersample: int, image_noise_std: float, batch_size: int,
                   workers: int, progress: bool, ambient_offset: float) -> dict:
    """`generate_split` into the empty folder `partial`; returns the manifest."""
    mix = dict(background_mix or schema_section_defaults("synthetic", "background_mix"))
    files = list_images(background_folder) if background_folder else None

    background_kinds(mix, files)  # a mix that draws nothing: said before any work
    region_model = model.drawn(render_region)
    layout = CodeLayout.for_model(region_model)
    examples = region_model.expression_examples
    if layout.n_expression and examples is not None and len(examples) and dist.blendshapes[1] > len(examples):
        raise MofaError(f"synthetic.distribution.blendshapes: at most {dist.blendshapes[1]} active blendshapes, "
                        f"but face model {model.name} has {len(examples)}")
    face = np.flatnonzero(region_model.regions[model.face_region])
    size = camera.image_size
    shapes = {"images": ((n, size, size, 3), np.uint8), "codes": ((n, layout.size), np.float32),
              "landmarks": ((n, 68, 2), np.float32), "landmark_visible": ((n, 68), bool),
              "vertices": ((n, len(face), 3), np.float32)}
    for k, (shp, dt) in shapes.items():  # the files, preallocated here, are filled by _write_all's processes
        np.lib.format.open_memmap(partial / f"{k}.npy", mode="w+", dtype=dt, shape=shp)
        with open(partial / f"{k}.npy", "rb+") as f:  # the disk space now: a full disk is an ENOSPC here,
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)  # not a SIGBUS in a worker
    spec = _SplitSpec(partial, seed, SPLIT_IDS[split], region_model, face, camera, dist, ambient_offset, mix, files,
                  supersample, image_noise_std)
    start = time.perf_counter()
    bar = tqdm(total=n, desc=f"synthetic {split}", unit="img", disable=not progress, leave=False)
    workers = workers or len(os.sched_getaffinity(0))
    rows = _write_all(spec, n, batch_size, max(1, min(workers, -(-n // batch_size))), bar)  # <= 1 per batch
    bar.close()
    seconds = time.perf_counter() - start
    pd.DataFrame(rows).to_csv(partial / "samples.csv", index=False, float_format="%.4f")
    manifest = {
        "format_version": FORMAT_VERSION, "split": split, "count": n, "seed": seed,
        "image_size": size, "code_layout": layout.sizes, "camera": dataclasses.asdict(camera),
        "face_model": model.name, "face_region": model.face_region, "render_region": render_region,
        "distribution": dataclasses.asdict(dist), "background_mix": mix,
        "background_folder": str(background_folder) if background_folder else None,
        "supersample": supersample, "image_noise_std": image_noise_std, "ambient_offset": ambient_offset,
        "seconds": round(seconds, 2), "images_per_second": round(n / max(seconds, 1e-9), 1),
    }
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


class SyntheticSet:
    """A generated split, memory-mapped: `batch(indices)` gives tensors ready for training/eval."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        if not manifest.is_file():
            raise MofaError(f"{self.folder}: not a synthetic split (no manifest.json); run the synthetic stage")
        self.manifest = read_json(manifest, "synthetic-split manifest")
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise MofaError(f"{manifest}: format {self.manifest.get('format_version')}, expected {FORMAT_VERSION}")
        if not isinstance(self.manifest.get("count"), int):
            raise MofaError(f"{manifest}: no image count; delete the split and run the synthetic stage again")
        self.arrays = {k: load_npy(self.folder / f"{k}.npy", rows=self.manifest["count"]) for k in ARRAYS}

    def __len__(self) -> int:
        return int(self.manifest["count"])

    def batch(self, indices, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """images (B, 3, H, W) float in [0, 1]; codes (B, D); landmarks (B, 68, 2) px;
        landmark_visible (B, 68); vertices (B, Nr, 3) mm."""
        idx = np.sort(np.asarray(indices))
        order = np.argsort(np.argsort(np.asarray(indices)))
        out = {k: torch.from_numpy(np.ascontiguousarray(self.arrays[k][idx][order])) for k in ARRAYS}
        out["images"] = out["images"].permute(0, 3, 1, 2).float().div_(255.0)
        return {k: v.to(device) for k, v in out.items()}


def generate(syn: "SyntheticSettings", model: FaceModel, camera: PinholeCamera, out_dir: str | Path,
             ambient_offset: float, progress: bool = True) -> dict:
    """Both splits of the synthetic settings into out_dir/{train,test}; returns {split: manifest}.
    ambient_offset: the light's (light.ambient_offset), as the training decoder uses it."""
    common = dict(model=model, camera=camera, seed=syn.seed, dist=CodeDistribution.from_config(syn.distribution),
                  render_region=syn.render_region, background_mix=dataclasses.asdict(syn.background_mix),
                  background_folder=syn.background_folder or os.environ.get("MOFA_BACKGROUND_DIR"),
                  supersample=syn.supersample, image_noise_std=float(syn.image_noise_std), workers=syn.workers,
                  progress=progress, ambient_offset=float(ambient_offset))
    return {split: generate_split(out_dir, split, getattr(syn, f"n_{split}"), **common) for split in ("train", "test")}