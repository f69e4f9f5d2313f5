"""Synthetic ground truth: random codes of the face model rendered over augmented backgrounds.

On-disk format of one split (a folder, written under `<folder>.partial` and renamed when complete):
  manifest.json          seed, counts, code layout, camera, face model, code distribution, timing
  samples.csv            index, yaw/pitch/roll (degrees), background kind, active blendshapes
  images.npy             (N, H, W, 3) uint8 sRGB-less linear RGB * 255
  codes.npy              (N, D) float32 ground-truth codes (layout in the manifest)
  landmarks.npy          (N, 68, 2) float32 pixels, iBUG order (projected model landmark vertices)
  landmark_visible.npy   (N, 68) bool, not self-occluded and inside the image
  vertices.npy           (N, Nr, 3) float32 camera-space mm of the training face region
Sample i of a split draws everything from `numpy.random.default_rng([seed, split_id, i])`, so the
data are the same whatever the batch size or interruption.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mofa.data.backgrounds import list_images, sample_background
from mofa.decoder import AMBIENT_OFFSET, Decoder, PinholeCamera
from mofa.decoder.layout import CodeLayout
from mofa.errors import MofaError
from mofa.facemodel.model import FaceModel
from mofa.render.raycast import render

log = logging.getLogger(__name__)
SPLIT_IDS = {"train": 0, "test": 1}
FORMAT_VERSION = 1
ARRAYS = ("images", "codes", "landmarks", "landmark_visible", "vertices")


@dataclasses.dataclass(frozen=True)
class CodeDistribution:
    """How synthetic codes are drawn (angles in degrees, translation in code units).

    Shape and reflectance: N(0, 1) priors. Expression: `blendshapes` (min, max) active blendshapes of
    the model's own, weights U(0, blendshape_weight_max), mapped into the expression basis; a model
    without blendshapes gets N(0, 0.5^2) on its first 10 modes. Pose: yaw U(-yaw, yaw), pitch and
    roll normal, clipped at two standard deviations. Light: mostly white (one SH vector shared by the
    channels) with mild per-channel colour, around the decoder's ambient offset.
    """
    yaw_deg: float = 45.0
    pitch_std_deg: float = 10.0
    roll_std_deg: float = 5.0
    translation_xy_std: float = 0.5
    translation_z_std: float = 4.0
    blendshapes: tuple[int, int] = (0, 3)
    blendshape_weight_max: float = 1.0
    light_ambient_std: float = 0.15
    light_directional_std: float = 0.25
    light_colour_std: float = 0.04

    @classmethod
    def from_config(cls, section: dict) -> "CodeDistribution":
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: (tuple(v) if k == "blendshapes" else v) for k, v in section.items() if k in fields}
        return cls(**kwargs)


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


_WORKER: dict = {}


def _init_worker(triangles, camera, mix, files, supersample, image_noise_std) -> None:
    torch.set_num_threads(1)
    _WORKER.update(triangles=triangles, camera=camera, mix=mix, files=files, supersample=supersample,
                   image_noise_std=image_noise_std)


def _render_sample(job) -> tuple[np.ndarray, np.ndarray, str]:
    """Render one sample: its background, noise and landmark visibility come from its own RNG stream
    (after the code's draws), so the result does not depend on which worker renders it."""
    seed, split_id, i, verts, cols, landmarks, landmark_z = job
    w = _WORKER
    rng = np.random.default_rng([seed, split_id, i, 1])
    size = w["camera"].image_size
    background, kind = sample_background(rng, size, w["mix"], w["files"])
    shot = render(verts, w["triangles"], cols, w["camera"], background, w["supersample"], cull_back_faces=True)
    pixels = shot.image + rng.normal(0, w["image_noise_std"], shot.image.shape) if w["image_noise_std"] else shot.image
    image = np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)
    return image, _landmark_visibility(landmarks, landmark_z, shot.depth), kind


@contextlib.contextmanager
def _render_pool(workers: int, *init_args):
    """A function jobs -> results, rendering in `workers` processes (or in this one when workers <= 1)."""
    if workers <= 1:
        _init_worker(*init_args)
        yield lambda jobs: [_render_sample(job) for job in jobs]
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        yield lambda jobs: pool.map(_render_sample, jobs, chunksize=max(1, len(jobs) // (2 * workers)))


def generate_split(out_dir: str | Path, split: str, n: int, model: FaceModel, camera: PinholeCamera,
                   seed: int, dist: CodeDistribution, render_region: str = "face_head",
                   background_mix: dict[str, float] | None = None, background_folder: str | None = None,
                   supersample: int = 1, image_noise_std: float = 0.01, batch_size: int = 32,
                   workers: int = 2, progress: bool = True, ambient_offset: float = AMBIENT_OFFSET) -> dict:
    """Render n samples of one split into out_dir/<split>; returns the manifest dict. ambient_offset:
    the SH light's ambient offset (the config's light.ambient_offset, as the training decoder uses)."""
    if split not in SPLIT_IDS:
        raise MofaError(f"synthetic split must be one of {sorted(SPLIT_IDS)}, got '{split}'")
    final = Path(out_dir) / split
    partial = final.with_name(final.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    mix = background_mix or {"procedural": 0.4, "noise": 0.2, "colour_field": 0.2, "folder": 0.2}
    files = list_images(background_folder) if background_folder else None

    region_model = model.submesh(render_region) if render_region in model.regions else model
    decoder = Decoder(region_model, camera, ambient_offset=ambient_offset)
    layout = decoder.layout
    face = region_model.regions[model.face_region]
    size = camera.image_size
    shapes = {"images": ((n, size, size, 3), np.uint8), "codes": ((n, layout.size), np.float32),
              "landmarks": ((n, 68, 2), np.float32), "landmark_visible": ((n, 68), bool),
              "vertices": ((n, int(face.sum()), 3), np.float32)}
    arrays = {k: np.lib.format.open_memmap(partial / f"{k}.npy", mode="w+", dtype=dt, shape=shp)
              for k, (shp, dt) in shapes.items()}
    rows = []
    start = time.perf_counter()
    bar = tqdm(total=n, desc=f"synthetic {split}", unit="img", disable=not progress, leave=False)
    with _render_pool(workers, region_model.triangles, camera, mix, files, supersample, image_noise_std) as pool:
        for lo in range(0, n, batch_size):
            idx = range(lo, min(n, lo + batch_size))
            rngs = [np.random.default_rng([seed, SPLIT_IDS[split], i]) for i in idx]
            sampled = [sample_code(r, layout, region_model, dist) for r in rngs]
            codes = torch.from_numpy(np.stack([c for c, _ in sampled]))
            with torch.no_grad():
                out = decoder(codes)
            verts, cols = out.vertices.numpy(), out.colours.clamp(0, 1).numpy()
            landmarks = out.screen.numpy()[:, region_model.landmarks]
            landmark_z = verts[:, region_model.landmarks, 2]
            jobs = [(seed, SPLIT_IDS[split], i, verts[j], cols[j], landmarks[j], landmark_z[j]) for j, i in enumerate(idx)]
            for j, (image, visible, kind) in enumerate(pool(jobs)):
                i = idx[j]
                arrays["images"][i] = image
                arrays["landmark_visible"][i] = visible
                rows.append({"index": i, **sampled[j][1], "background": kind})
            arrays["codes"][idx.start:idx.stop] = codes.numpy()
            arrays["landmarks"][idx.start:idx.stop] = landmarks
            arrays["vertices"][idx.start:idx.stop] = verts[:, face]
            bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - start
    for a in arrays.values():
        a.flush()
    del arrays
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
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    log.info("synthetic %s: %d images in %.1f s (%.1f images/s) -> %s", split, n, seconds, n / max(seconds, 1e-9), final)
    return manifest


class SyntheticSet:
    """A generated split, memory-mapped: `batch(indices)` gives tensors ready for training/eval."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        manifest = self.folder / "manifest.json"
        if not manifest.is_file():
            raise MofaError(f"{self.folder}: not a synthetic split (no manifest.json); run the synthetic stage")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format_version") != FORMAT_VERSION:
            raise MofaError(f"{manifest}: format {self.manifest.get('format_version')}, expected {FORMAT_VERSION}")
        self.arrays = {k: np.load(self.folder / f"{k}.npy", mmap_mode="r") for k in ARRAYS}

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


def generate(cfg: dict, model: FaceModel, camera: PinholeCamera, out_dir: str | Path, progress: bool = True) -> dict:
    """Both splits of cfg['synthetic'] into out_dir/{train,test}; returns {split: manifest}."""
    syn = cfg["synthetic"]
    dist = CodeDistribution.from_config(syn.get("distribution", {}))
    folder = syn.get("background_folder") or os.environ.get("MOFA_BACKGROUND_DIR")
    common = dict(model=model, camera=camera, seed=int(syn["seed"]), dist=dist,
                  render_region=syn["render_region"], background_mix=syn["background_mix"],
                  background_folder=folder, supersample=int(syn["supersample"]),
                  image_noise_std=float(syn["image_noise_std"]), workers=int(syn["workers"]), progress=progress,
                  ambient_offset=float(cfg["light"]["ambient_offset"]))
    return {split: generate_split(out_dir, split, int(syn[f"n_{split}"]), **common) for split in ("train", "test")}

