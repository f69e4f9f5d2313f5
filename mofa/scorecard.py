"""The scorecard: one row per finding of the paper, the paper's numbers, ours, and whether it holds here,
each computed from the result tables (results/<preset>/tables/*.csv). The report opens with it and
`mofa report` prints it first.

A verdict is HOLDS, DOES_NOT_HOLD or NOT_MEASURED (the table, or the rows the finding needs, are missing:
an experiment not run at this scale). How each finding is decided is in its function's docstring.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from mofa.results import read_table

HOLDS, DOES_NOT_HOLD, NOT_MEASURED = "holds", "does not hold", "not measured at this scale"
COLUMNS = ("experiment", "claim", "paper", "ours", "verdict")
GN_LAND, GN_NOLAND, MEAN_FACE = "Gauss-Newton with landmarks", "Gauss-Newton without landmarks", "mean face (start)"
SPEEDUP = 100.0  # "orders of magnitude faster": the paper's 4 ms against ~500 ms is 125x
E1_METRICS = (("geometric_error", "mm"), ("photometric_error", ""), ("landmark_error", "px"))


class NotMeasured(Exception):
    """A table or the rows a finding needs are missing."""


def _g(value: float) -> str:
    return f"{value:.4g}"


def _need(tables: dict[str, pd.DataFrame], name: str) -> pd.DataFrame:
    if name not in tables:
        raise NotMeasured(f"no tables/{name}.csv")
    return tables[name]


def _verdict(ok: bool) -> str:
    return HOLDS if ok else DOES_NOT_HOLD


def e1_errors_fall(tables) -> tuple[str, str]:
    """E1 (tables/e1_synthetic.csv): for every encoder, the geometric, photometric and landmark error
    at the end are below those at the start."""
    frame = _need(tables, "e1_synthetic")
    frame = frame[frame.metric.isin([m for m, _ in E1_METRICS])]
    if frame.empty:
        raise NotMeasured("e1_synthetic has none of the three errors")
    parts, ok = [], True
    for encoder, group in frame.groupby("encoder", sort=False):
        falls = {r.metric: (r.ours_start, r.ours_end) for r in group.itertuples()}
        ok &= all(end < start for start, end in falls.values()) and len(falls) == len(E1_METRICS)
        parts.append(f"{encoder}: " + ", ".join(f"{_g(s)} -> {_g(e)}" for s, e in falls.values()))
    return "; ".join(parts), _verdict(ok)


def e2_landmark_error_falls(tables) -> tuple[str, str]:
    """E2 (tables/e2_real_curves.csv, trained on real photos without landmarks): for every encoder the
    landmark error at the last evaluation is below the first."""
    frame = _need(tables, "e2_real_curves")
    parts, ok = [], True
    for encoder, group in frame.groupby("encoder", sort=False):
        group = group.sort_values("iteration")
        start, end = float(group.landmark_error_mean.iloc[0]), float(group.landmark_error_mean.iloc[-1])
        ok &= end < start
        parts.append(f"{encoder}: {_g(start)} -> {_g(end)} px")
    if not parts:
        raise NotMeasured("e2_real_curves is empty")
    return "; ".join(parts), _verdict(ok)


def _e3_errors(tables) -> dict[tuple[str, str], float]:
    frame = _need(tables, "e3_variants")
    return {(str(r.encoder), str(r.landmark_loss)): float(r.landmark_error) for r in frame.itertuples()}


def e3_landmark_loss_helps(tables) -> tuple[str, str]:
    """E3 (tables/e3_variants.csv): for every encoder trained both ways, the landmark error with the
    landmark loss is below the one without."""
    errors = _e3_errors(tables)
    both = [e for e in dict.fromkeys(e for e, _ in errors) if (e, "yes") in errors and (e, "no") in errors]
    if not both:
        raise NotMeasured("no encoder trained with and without the landmark loss")
    ok = all(errors[(e, "yes")] < errors[(e, "no")] for e in both)
    return "; ".join(f"{e}: {_g(errors[(e, 'no')])} -> {_g(errors[(e, 'yes')])} px" for e in both), _verdict(ok)


def e3_face_encoder_beats_alexnet(tables) -> tuple[str, str]:
    """E3 (tables/e3_variants.csv): the face-pretrained encoder (the one in the paper's VGG-Face slot,
    mofa.paper.paper_counterpart) has a lower landmark error than AlexNet, with and without the landmark loss."""
    from mofa.paper import paper_counterpart

    errors = _e3_errors(tables)
    faces = [e for e in dict.fromkeys(e for e, _ in errors) if e != "alexnet" and paper_counterpart(e) == "VGG-Face"]
    pairs = [(face, loss) for face in faces[:1] for loss in ("no", "yes") if (face, loss) in errors and ("alexnet", loss) in errors]
    if not pairs:
        raise NotMeasured("e3_variants lacks AlexNet or a face-pretrained encoder")
    ok = all(errors[p] < errors[("alexnet", p[1])] for p in pairs)
    return "; ".join(f"{'with' if loss == 'yes' else 'without'} landmarks: {face} {_g(errors[(face, loss)])} vs AlexNet "
                     f"{_g(errors[('alexnet', loss)])} px" for face, loss in pairs), _verdict(ok)


def _e4_rows(tables) -> tuple[pd.DataFrame, str, str]:
    frame = _need(tables, "e4_baselines")
    for dataset, metric in (("synthetic", "geometric_error_mean"), ("real", "landmark_error_mean")):
        rows = frame[frame.dataset == dataset].set_index("method")
        if {GN_LAND, GN_NOLAND, MEAN_FACE} <= set(rows.index) and rows[metric].notna().all():
            return rows, dataset, metric
    raise NotMeasured("e4_baselines lacks the mean face and the two Gauss-Newton fits")


def e4_stuck_without_landmarks(tables) -> tuple[str, str]:
    """E4 (tables/e4_baselines.csv; synthetic geometric error, else real landmark error): the
    Gauss-Newton fit without landmarks ends nearer the mean face it starts from than the fit with
    landmarks ends (|no-landmark - start| < |no-landmark - with landmarks|)."""
    rows, dataset, metric = _e4_rows(tables)
    start, noland, land = (float(rows.loc[m, metric]) for m in (MEAN_FACE, GN_NOLAND, GN_LAND))
    unit = "mm" if "geometric" in metric else "px"
    ours = (f"{dataset} {metric.removesuffix('_mean').replace('_', ' ')}: start {_g(start)}, without landmarks "
            f"{_g(noland)}, with {_g(land)} {unit}")
    return ours, _verdict(abs(noland - start) < abs(noland - land))


def e4_encoder_faster(tables) -> tuple[str, str]:
    """E4 (tables/e4_baselines.csv): the fastest encoder's speed-up over Gauss-Newton with landmarks
    (speedup_over_gauss_newton, best over datasets) is at least SPEEDUP."""
    frame = _need(tables, "e4_baselines")
    speedups = pd.to_numeric(frame.get("speedup_over_gauss_newton"), errors="coerce")
    if speedups is None or not np.isfinite(speedups).any():
        raise NotMeasured("e4_baselines has no speed-up")
    best = float(np.nanmax(speedups))
    gn = pd.to_numeric(frame[frame.method == GN_LAND].ms_per_image, errors="coerce").mean()
    return f"{_g(best)}x (Gauss-Newton {_g(gn)} ms per image)", _verdict(best >= SPEEDUP)


def e5_no_semantic_code(tables) -> tuple[str, str]:
    """E5 (tables/e5_conv_autoencoder.csv): the conv autoencoder's row says its code has no semantic
    outputs, and the model-based rows name theirs."""
    frame = _need(tables, "e5_conv_autoencoder")
    conv = frame[frame.method == "conv autoencoder"]
    model = frame[frame.method != "conv autoencoder"]
    if conv.empty or model.empty or "semantic_outputs" not in frame:
        raise NotMeasured("e5_conv_autoencoder lacks the conv autoencoder or a model-based row")
    conv_outputs = str(conv.semantic_outputs.iloc[0])
    ok = conv_outputs == "none" and all(str(v) not in ("none", "nan", "") for v in model.semantic_outputs)
    return (f"conv autoencoder: {conv_outputs}; model-based: {model.semantic_outputs.iloc[0]} (photometric error "
            f"{_g(float(conv.photometric_error.iloc[0]))} vs {_g(float(model.photometric_error.iloc[0]))})"), _verdict(ok)


def e6_learned_blurrier(tables) -> tuple[str, str]:
    """E6 (tables/e6_learned_decoder.csv): the learned decoder's SSIM against the ground truth over the
    face region is below the analytic decoder's (blur loses the structure SSIM measures)."""
    frame = _need(tables, "e6_learned_decoder").set_index("method")
    if not {"analytic decoder", "learned decoder"} <= set(frame.index):
        raise NotMeasured("e6_learned_decoder lacks the analytic or the learned decoder")
    learned, analytic = float(frame.loc["learned decoder", "ssim"]), float(frame.loc["analytic decoder", "ssim"])
    return f"SSIM learned {_g(learned)} vs analytic {_g(analytic)}", _verdict(learned < analytic)


# (experiment, claim, the paper's numbers, how ours is decided)
CLAIMS: tuple[tuple[str, str, str, Callable], ...] = (
    ("E1", "training on synthetic data lowers the geometric, photometric and landmark errors",
     "21.6 -> 4.5 mm, 0.33 -> 0.05, 31.6 -> 3.9 px (Fig. 10)", e1_errors_fall),
    ("E2", "training on real photos without landmarks lowers the landmark error",
     "falls during training (Fig. 9), to 5.3 px AlexNet, 4.9 px VGG-Face", e2_landmark_error_falls),
    ("E3", "the landmark loss lowers the landmark error",
     "AlexNet 5.3 -> 3.7 px, VGG-Face 4.9 -> 3.4 px (Figs. 9, 11)", e3_landmark_loss_helps),
    ("E3", "the face-pretrained encoder beats AlexNet",
     "VGG-Face 4.9 vs AlexNet 5.3 px without landmarks, 3.4 vs 3.7 px with (Fig. 8)", e3_face_encoder_beats_alexnet),
    ("E4", "the optimisation without landmarks stays near its start (a local minimum)",
     "often gets stuck in a local minimum (Fig. 7)", e4_stuck_without_landmarks),
    ("E4", f"the encoder is at least {SPEEDUP:g}x faster than the optimisation",
     "4 ms vs ~500 ms per image, 125x (Sec. 7)", e4_encoder_faster),
    ("E5", "the convolutional autoencoder's code has no semantic meaning",
     "no semantic parameters (Fig. 12)", e5_no_semantic_code),
    ("E6", "the learned decoder's output is blurrier than the analytic decoder's",
     "blurrier, without fine detail (Fig. 13)", e6_learned_blurrier),
)


def read_tables(tables_dir: Path) -> dict[str, pd.DataFrame]:
    """Every result table under tables_dir by file stem (read_table's frame)."""
    return {path.stem: read_table(path).frame for path in sorted(Path(tables_dir).glob("*.csv"))}


def scorecard(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per CLAIMS entry: experiment, claim, paper, ours, verdict."""
    rows = []
    for experiment, claim, paper, decide in CLAIMS:
        try:
            ours, verdict = decide(tables)
        except NotMeasured as exc:
            ours, verdict = str(exc), NOT_MEASURED
        except (KeyError, AttributeError, ValueError, TypeError) as exc:  # a table without the columns it needs
            ours, verdict = f"unreadable table ({exc.__class__.__name__}: {exc})", NOT_MEASURED
        rows.append({"experiment": experiment, "claim": claim, "paper": paper, "ours": ours, "verdict": verdict})
    return pd.DataFrame(rows, columns=list(COLUMNS))
