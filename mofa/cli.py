"""The `mofa` command line. Every user-facing problem ends as one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

from mofa.errors import ArgumentParser, MofaError, Terminated, terminate_as_interrupt


def _config(args: argparse.Namespace) -> dict:
    from mofa.config import load_config
    return load_config(args.config)


def cmd_model_info(args: argparse.Namespace) -> None:
    from mofa.facemodel import build_face_model
    from mofa.settings import Settings
    cfg = _config(args)
    cfg["face_model"]["name"] = args.model
    model = build_face_model(Settings.from_config(cfg).face_model, rebuild=args.rebuild)
    print(model.card())


def cmd_bench(args: argparse.Namespace) -> None:
    from mofa import bench
    from mofa.config import select_device
    from mofa.facemodel import build_face_model
    from mofa.settings import Settings
    cfg = _config(args)
    if args.device:
        cfg["device"] = args.device
    settings = Settings.from_config(cfg)
    select_device(settings.device)  # a device this machine lacks: one line here, not from each torchrun process
    if args.what == "decoder":
        model, camera, device = build_face_model(settings.face_model), settings.camera, select_device(settings.device)
        print(f"decoder forward+backward (training region '{model.face_region}', incl. bilinear sampling "
              f"and the photometric l2,1 term) on {device}:")
        print(bench.format_rows(bench.bench_decoder(model, camera, device)))
        print(f"renderer (Open3D ray casting, {camera.image_size}x{camera.image_size}):")
        print(bench.format_rows([bench.bench_renderer(model, camera, n_images=args.images)]))
    elif args.what == "train" and args.processes > 1:
        from mofa.bench_processes import bench_under_torchrun
        print(f"training step on 1 and {args.processes} processes (torchrun; the config's batch shared; "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} per process):")
        print(bench.format_rows([bench_under_torchrun(args.config, name, p, device=args.device, input_size=args.input_size)
                                 for name in args.encoders for p in (1, args.processes)]))
    elif args.what in ("train", "infer"):
        from mofa.machine_load import LoadMonitor
        model, camera, device = build_face_model(settings.face_model), settings.camera, select_device(settings.device)
        input_size = args.input_size or settings.training.input_size
        precisions = bench.timed_precisions(args.precisions, device)
        if "bf16" not in precisions:
            print("bf16: not native on this device (no avx512_bf16 or amx_bf16 CPU flag), so not timed per encoder; "
                  "pass --precisions fp32 bf16 to time its emulation")
        common = dict(encoders=args.encoders, input_size=input_size, device=device, options=settings.encoders,
                      precisions=precisions)
        with LoadMonitor() as load:
            if args.what == "train":
                peak_rows = bench.bench_peak(device)
                print(f"peak on {bench.device_name(device)} (the roofline's ceiling):")
                print(bench.format_rows(peak_rows), flush=True)
                print(f"\ntraining step at batch {args.batch}, encoder input {input_size} px (or the encoder's own):")
                print(bench.format_rows(bench.bench_train(model, camera, batch_sizes=(args.batch,),
                                                          peak=bench.peak_gflops(peak_rows), **common)), flush=True)
                print("\ninference (encoder + decoder, no gradients):")
            else:
                print(f"inference on {bench.device_name(device)}, encoder input {input_size} px (or the encoder's own):")
            print(bench.format_rows(bench.bench_infer(model, camera, batch_sizes=(1, args.batch), **common)))
        print(f"\nmachine load: {bench.format_load(load.summary())}" + (f"; {load.note()}" if load.note() else ""))
    else:
        raise MofaError(f"mofa bench: unknown benchmark '{args.what}'")


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from mofa.reconstruct import reconstruct
    faces, failed = reconstruct(args.photos, args.out, args.checkpoint)
    print(f"{faces} face{'s' if faces != 1 else ''} reconstructed, {failed} photo{'s' if failed != 1 else ''} failed")
    return 1 if failed else 0


def cmd_evaluate(args: argparse.Namespace) -> None:
    from mofa.config import load_config, select_device
    from mofa.evaluation.aflw2000 import benchmark_folder
    from mofa.facemodel import build_face_model
    from mofa.encoders.card import card_path, check_input_size, problems_named_by, read_card, weights_path
    from mofa.realdata.crop_policy import CropPolicy
    from mofa.settings import Settings
    from mofa.training.runs import load_encoder, training_decoder

    for out in (args.out, args.landmarks_out):  # before the evaluation, not after it
        if out is not None:
            check_output_file(out)
    if args.out and args.landmarks_out and args.out.resolve() == args.landmarks_out.resolve():
        raise MofaError(f"{args.out}: given as both --out and --landmarks-out; give them two names")
    inputs = {weights_path(args.checkpoint).resolve(): "the checkpoint",
              card_path(weights_path(args.checkpoint)).resolve(): "the checkpoint's encoder card"}
    for out in filter(None, (args.out, args.landmarks_out)):  # writing over an input would lose it
        taken = inputs.get(out.resolve())
        if out.is_file() and out.parent.resolve() == args.root.resolve() and out.suffix in (".jpg", ".mat"):
            taken = "an image or annotation of --root"
        if taken:
            raise MofaError(f"{out}: is {taken}; give the output another name")
    args.checkpoint = weights_path(args.checkpoint)
    card = read_card(card_path(args.checkpoint))
    if args.encoder and card.get("encoder") not in (None, args.encoder):
        raise MofaError(f"--encoder {args.encoder}: the checkpoint's {card_path(args.checkpoint)} names the "
                        f"{card['encoder']} encoder; leave --encoder out")
    if args.config is None and card:  # the preset, face model and camera the encoder was trained with
        if "preset" not in card:
            raise MofaError(f"{card_path(args.checkpoint)}: encoder card without preset; "
                            "pass --config")
        with problems_named_by(card_path(args.checkpoint)):
            cfg = load_config(card["preset"], {k: card[k] for k in ("face_model", "camera", "light") if k in card}
                              | {"training.rotation_bound_deg": card.get("rotation_bound_deg")})
    else:
        cfg = load_config(args.config or "default")
    if args.device:
        cfg["device"] = args.device
    encoder_name = args.encoder or card.get("encoder") or "alexnet"
    settings = Settings.from_config(cfg)
    device = select_device(settings.device)
    decoder = training_decoder(settings, build_face_model(settings.face_model)).to(device)
    with problems_named_by(card_path(args.checkpoint), args.checkpoint) if card else contextlib.nullcontext():
        encoder, trained_size = load_encoder(settings, encoder_name, decoder, args.checkpoint)
    input_size = args.input_size or trained_size or settings.training.input_size
    check_input_size(encoder, encoder_name, input_size,
                     "--input-size" if args.input_size else "training.input_size" if not trained_size
                     else card_path(args.checkpoint) if card.get("input_size") == trained_size else args.checkpoint)
    result = benchmark_folder(args.root, encoder.to(device), decoder, input_size, CropPolicy.from_settings(settings),
                              max_images=args.limit, progress=args.verbose)
    print(f"{encoder_name} encoder from {args.checkpoint} (input {input_size} px) on {args.root}:")
    print(result.report())
    if args.out:
        write_csv_atomic(result.table_frame(), args.out, float_format="%.6g")
        print(f"wrote {args.out}")
    if args.landmarks_out:
        write_landmarks_csv(result.per_image, args.landmarks_out)
        print(f"wrote {args.landmarks_out} ({len(result.per_image)} images)")


def check_output_file(path: Path) -> None:
    """A MofaError unless `path` can be written as a file: its folder created and writable, and
    `path` itself not a folder. Checked before long work, so that the work is not lost."""
    from mofa.config import writable_folder
    if path.is_dir():
        raise MofaError(f"{path}: is a folder; give a file name")
    writable_folder(path.parent)


def write_csv_atomic(frame, path: Path, **to_csv) -> None:
    """frame.to_csv through `mofa.io.atomic_open`: no partial file under its name; a full disk or the
    like as a MofaError naming it."""
    from mofa.io import atomic_open
    with atomic_open(path, "w", newline="") as fh:
        frame.to_csv(fh, index=False, **to_csv)


def write_landmarks_csv(per_image, path: Path) -> None:
    """Each scored image's predicted 68 points in original-image px as CSV (name, x0..x67, y0..y67),
    written atomically: to score them against another annotation (e.g. 3DDFA's re-annotated landmarks)."""
    import pandas as pd

    points = per_image.attrs["pred_image_px"]  # (B, 68, 2)
    columns = {"name": [str(i).rsplit("/", 1)[-1] for i in per_image["id"]]}
    columns |= {f"x{k}": points[:, k, 0] for k in range(points.shape[1])}
    columns |= {f"y{k}": points[:, k, 1] for k in range(points.shape[1])}
    write_csv_atomic(pd.DataFrame(columns), path, float_format="%.3f")


def cmd_detection_rate(args: argparse.Namespace) -> int:
    from mofa.realdata.detection_rate import run
    return run(args)


def cmd_report(args: argparse.Namespace) -> None:
    from mofa.config import REPO_ROOT, load_config, presets, results_dir
    from mofa.results import format_value, main_table
    from mofa.scorecard import read_tables, scorecard

    root = results_dir(load_config(args.preset)).expanduser()
    if not root.is_absolute() and not (root / "tables").is_dir():  # none here (Snakemake's folder): this checkout's
        root = REPO_ROOT / root
    table = main_table(root / "tables")
    scores = scorecard(read_tables(root / "tables"))
    print(f"{args.preset} preset ({root}): the paper's findings here")
    for row in scores.itertuples():
        print(f"  {row.experiment} {row.claim}: {row.verdict.upper()}\n      paper: {row.paper}\n      ours:  {row.ours}")
    print("\nours beside the paper's (paper_*)")
    print(table.apply(lambda column: column.map(format_value)).to_string(index=False))
    report = root / "report.html"
    config = f"config/{args.preset}.yaml" if args.preset in presets() else args.preset
    print(f"full report: {report}" if report.is_file() else
          f"no {report} yet: snakemake --cores all --configfile {config} report")


def positive_int(text: str) -> int:
    """argparse type of a count or size: a whole number >= 1 (argparse turns the error into its one line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="mofa", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("model-info", help="print a face model's card (builds and caches it on first use)")
    p.add_argument("model", choices=["ict", "bfm2009", "bfm2017"])
    p.add_argument("--config", default="default", help="preset name (ci, default, paper) or YAML file")
    p.add_argument("--rebuild", action="store_true", help="ignore the cached .npz")
    p.set_defaults(func=cmd_model_info)

    p = sub.add_parser("bench", help="print speed figures (not a test)")
    p.add_argument("what", choices=["decoder", "train", "infer"])
    p.add_argument("--encoders", nargs="+", default=["alexnet", "vgg_face", "dlib_resnet"],
                   help="encoders to time (train, infer)")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16", "auto"], default=["fp32", "auto"],
                   help="encoder precisions to time (train, infer); auto: bf16 where the device has it natively")
    p.add_argument("--batch", type=positive_int, default=32, help="batch size of the training step (infer: 1 and this)")
    p.add_argument("--input-size", type=positive_int,
                   help="encoder input side in px (default: the config's training.input_size, or the encoder's own)")
    p.add_argument("--config", default="default", help="preset name or YAML file")
    p.add_argument("--device", choices=["cpu", "cuda"], help="override the config's device")
    p.add_argument("--images", type=positive_int, default=200, help="images to render for the renderer figure")
    p.add_argument("--processes", type=positive_int, default=1, help="train: also time the step shared by this many "
                   "processes under torchrun (images/s of the config's batch on 1 and N processes)")
    p.set_defaults(func=cmd_bench)
    p = sub.add_parser("reconstruct", help="reconstruct the faces in photos: mesh (.ply, .obj), overlay PNG, code JSON")
    p.add_argument("photos", nargs="+", type=Path, metavar="PHOTO",
                   help="image files, or folders of them (their .jpg, .png, ... files, not recursive)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    p.add_argument("--checkpoint", type=Path, help="encoder weights with encoder.json beside them, or their folder "
                   "(default: what `make reproduce` trained under results/default/runs/)")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("evaluate", help="benchmark a trained encoder on a folder of real photos")
    p.add_argument("benchmark", choices=["aflw2000"],
                   help="aflw2000: 68-landmark NME per |yaw| bin on a folder in the AFLW2000-3D layout")
    p.add_argument("--root", type=Path, required=True, help="folder of imageNNNNN.jpg + imageNNNNN.mat")
    p.add_argument("--checkpoint", type=Path, required=True, help="encoder.pt or checkpoint.pt of a training run, or the run's folder")
    p.add_argument("--encoder", choices=["alexnet", "vgg_face", "dlib_resnet"],
                   help="the checkpoint's encoder (default: its encoder.json's, else alexnet)")
    p.add_argument("--config", help="preset name or YAML file the encoder was trained with (face model, camera, "
                   "crop margin; default: what the encoder.json beside the checkpoint says, else the default preset)")
    p.add_argument("--input-size", type=positive_int, help="encoder input side in px (default: the checkpoint's, else the config's)")
    p.add_argument("--landmarks-out", type=Path, help="also write each image's predicted 68 points in original-image "
                   "px (CSV: name, x0..x67, y0..y67), to score against another annotation")
    p.add_argument("--limit", type=positive_int, help="the first N images only")
    p.add_argument("--device", choices=["cpu", "cuda"], help="override the config's device")
    p.add_argument("--out", type=Path, help="also write the table as CSV here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("detection-rate", help="how often each face detector finds the annotated face (AFLW2000, ibug68)")
    from mofa.realdata.detection_rate import add_arguments
    add_arguments(p)
    p.set_defaults(func=cmd_detection_rate)

    p = sub.add_parser("report", help="print the scorecard of the paper's findings, then the main results table")
    p.add_argument("--preset", default="default", help="preset name (ci, default, paper) or YAML file")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    with terminate_as_interrupt():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        status = args.func(args)
        sys.stdout.flush()  # here, not at exit, so that a reader that has gone is caught below
    except BrokenPipeError:  # `mofa report | head`: the reader has gone; nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a writer the pipe stopped
    except MofaError as exc:
        print(f"mofa: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an I/O problem no step turned into a MofaError: still one line naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"mofa: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:  # torch's CPU allocator raises RuntimeError; CUDA's subclasses it
        if not isinstance(exc, MemoryError) and "allocate" not in str(exc) and "out of memory" not in str(exc):
            raise
        tried = str(exc).split("you tried to allocate ", 1)[-1].split(".")[0] if "tried to allocate" in str(exc) else ""
        print(f"mofa: error: out of memory{f' (tried to allocate {tried})' if tried else ''}; "
              "use a smaller --input-size, batch or image", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated)
        terminated = isinstance(exc, Terminated)
        print(f"mofa: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)  # as a shell reports them
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
