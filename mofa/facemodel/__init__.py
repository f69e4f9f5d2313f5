"""Face models: one `FaceModel` type, loaders that produce it, and a per-model `.npz` cache."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mofa.errors import MofaError
from mofa.io import reason
from mofa.facemodel.model import FORMAT_VERSION, FaceModel

if TYPE_CHECKING:
    from mofa.settings import FaceModelSettings

log = logging.getLogger(__name__)

MODEL_KEYS = ("name", "n_shape", "n_expression", "n_reflectance", "face_region")
CACHE_ENV_VAR = "MOFA_CACHE_DIR"


def cache_dir(fm: "FaceModelSettings") -> Path:
    """The face-model cache folder: $MOFA_CACHE_DIR when set, else face_model.cache_dir, a relative
    one taken from the repository root (where results/ lies), never from the working directory."""
    from mofa.config import REPO_ROOT
    folder = Path(os.environ.get(CACHE_ENV_VAR) or fm.cache_dir).expanduser()
    return folder if folder.is_absolute() else REPO_ROOT / folder


def _source_paths(fm: "FaceModelSettings") -> list[str]:
    return [str(Path(p).resolve()) for p in (fm.path, fm.expression_path, fm.landmarks_path) if p]


def _loader_code_hash() -> str:
    """Hash of the loaders' source: editing a loader rebuilds the models it made."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_path(fm: "FaceModelSettings") -> Path:
    """Where the built model of these settings is cached: <cache_dir>/<name>-<hash of the options>.npz."""
    key = {k: getattr(fm, k) for k in MODEL_KEYS}
    key["versions"] = (FORMAT_VERSION, _loader_code_hash())
    if fm.name != "ict":  # user files: their identity is their path, size and time
        key["files"] = [(p, os.stat(p).st_size, int(os.stat(p).st_mtime)) for p in _source_paths(fm) if os.path.exists(p)]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir(fm) / f"{fm.name}-{digest}.npz"


def load_face_model(fm: "FaceModelSettings") -> FaceModel:
    """Build the model the face_model settings name from its source files (no cache)."""
    counts = dict(n_shape=fm.n_shape, n_expression=fm.n_expression, n_reflectance=fm.n_reflectance)
    if fm.name == "ict":
        from mofa.facemodel.download import resolve_ict_dir
        from mofa.facemodel.ict import load_ict
        return load_ict(resolve_ict_dir(fm.path, cache_dir(fm)), face_region=fm.face_region, **counts)
    if not fm.path:
        raise MofaError(f"face_model.path: the {fm.name} model file is needed (it cannot be redistributed)")
    from mofa.facemodel import bfm
    if fm.name == "bfm2009":
        if not fm.expression_path:
            raise MofaError("face_model.expression_path: BFM 2009 needs an expression basis file")
        return bfm.load_bfm2009(fm.path, fm.expression_path, fm.landmarks_path, **counts)
    if fm.name == "bfm2017":
        return bfm.load_bfm2017(fm.path, fm.landmarks_path, **counts)
    raise MofaError(f"face_model.name: unknown face model '{fm.name}' (have ict, bfm2009, bfm2017)")


def build_face_model(fm: "FaceModelSettings", rebuild: bool = False) -> FaceModel:
    """The full face model of the face_model settings, from its cache when present, else built and cached."""
    path = cache_path(fm)
    if path.exists() and not rebuild:
        try:
            model = FaceModel.load(path)
        except MofaError as exc:  # a cut-short or foreign file: the cache is rebuilt, never trusted
            log.warning("face model: %s; building it again", exc)
        else:
            log.info("face model: read %s", path)
            return model
    else:
        log.info("face model: building %s (first time; cached afterwards)", fm.name)
    from mofa.config import writable_folder
    try:
        writable_folder(path.parent)  # before the build, not after it
    except MofaError as exc:
        raise MofaError(f"{exc}; it is the face-model cache: set {CACHE_ENV_VAR} to a writable folder") from None
    model = load_face_model(fm)
    try:
        model.save(path)
    except OSError as exc:
        raise MofaError(f"{path}: cannot write the face-model cache ({reason(path, exc)}); set {CACHE_ENV_VAR} "
                        "to a writable folder") from None
    log.info("face model: wrote %s", path)
    return model


__all__ = ["CACHE_ENV_VAR", "FaceModel", "build_face_model", "cache_dir", "cache_path", "load_face_model"]
