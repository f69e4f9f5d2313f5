"""Face models: one `FaceModel` type, loaders that produce it, and a per-model `.npz` cache."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from mofa.errors import MofaError
from mofa.facemodel.model import FORMAT_VERSION, FaceModel

log = logging.getLogger(__name__)

MODEL_KEYS = ("name", "n_shape", "n_expression", "n_reflectance", "face_region")
CACHE_ENV_VAR = "MOFA_CACHE_DIR"


def cache_dir(fm: dict) -> Path:
    """The face-model cache folder: $MOFA_CACHE_DIR when set, else face_model.cache_dir, a relative
    one taken from the repository root (where results/ lies), never from the working directory."""
    from mofa.config import REPO_ROOT
    folder = Path(os.environ.get(CACHE_ENV_VAR) or fm["cache_dir"]).expanduser()
    return folder if folder.is_absolute() else REPO_ROOT / folder


def _source_paths(fm: dict) -> list[str]:
    return [str(Path(p).resolve()) for p in (fm.get("path"), fm.get("expression_path"), fm.get("landmarks_path")) if p]


def _loader_code_hash() -> str:
    """Hash of the loaders' source: editing a loader rebuilds the models it made."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_path(cfg: dict) -> Path:
    """Where the built model of this config is cached: <cache_dir>/<name>-<hash of the options>.npz."""
    fm = cfg["face_model"]
    key = {k: fm.get(k) for k in MODEL_KEYS}
    key["versions"] = (FORMAT_VERSION, _loader_code_hash())
    if fm["name"] != "ict":  # user files: their identity is their path, size and time
        key["files"] = [(p, os.stat(p).st_size, int(os.stat(p).st_mtime)) for p in _source_paths(fm) if os.path.exists(p)]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir(fm) / f"{fm['name']}-{digest}.npz"


def load_from_config(cfg: dict) -> FaceModel:
    """Build the model named by cfg['face_model'] from its source files (no cache)."""
    fm = cfg["face_model"]
    counts = dict(n_shape=fm["n_shape"], n_expression=fm["n_expression"], n_reflectance=fm["n_reflectance"])
    if fm["name"] == "ict":
        from mofa.facemodel.download import resolve_ict_dir
        from mofa.facemodel.ict import load_ict
        return load_ict(resolve_ict_dir(fm.get("path"), cache_dir(fm)), face_region=fm["face_region"], **counts)
    if not fm.get("path"):
        raise MofaError(f"face_model.path: the {fm['name']} model file is needed (it cannot be redistributed)")
    from mofa.facemodel import bfm
    if fm["name"] == "bfm2009":
        if not fm.get("expression_path"):
            raise MofaError("face_model.expression_path: BFM 2009 needs an expression basis file")
        return bfm.load_bfm2009(fm["path"], fm["expression_path"], fm.get("landmarks_path"), **counts)
    if fm["name"] == "bfm2017":
        return bfm.load_bfm2017(fm["path"], fm.get("landmarks_path"), **counts)
    raise MofaError(f"face_model.name: unknown face model '{fm['name']}' (have ict, bfm2009, bfm2017)")


def build_face_model(cfg: dict, rebuild: bool = False) -> FaceModel:
    """The full face model of this config, from its cache when present, else built and cached."""
    path = cache_path(cfg)
    if path.exists() and not rebuild:
        log.info("face model: read %s", path)
        return FaceModel.load(path)
    log.info("face model: building %s (first time; cached afterwards)", cfg["face_model"]["name"])
    model = load_from_config(cfg)
    try:
        model.save(path)
    except OSError as exc:
        raise MofaError(f"{path}: cannot write the face-model cache ({exc.strerror}); set {CACHE_ENV_VAR} "
                        "to a writable folder") from None
    log.info("face model: wrote %s", path)
    return model


__all__ = ["CACHE_ENV_VAR", "FaceModel", "build_face_model", "cache_dir", "cache_path", "load_from_config"]
