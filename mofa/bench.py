"""Speed benchmarks: the decoder with the photometric term (forward and backward), and the renderer.

`bench_decoder` times what one training step spends outside the encoder: decode a batch of codes on
the training region, sample the input image bilinearly at the projected vertices, reduce the
l2,1 photometric loss over visible vertices (`mofa.losses.photometric_loss`) and back-propagate
into the code.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from mofa.decoder import Decoder, PinholeCamera
from mofa.losses import photometric_loss
from mofa.render.raycast import render

if TYPE_CHECKING:
    from mofa.settings import EncoderSettings

def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_decoder(model, camera: PinholeCamera, device="cpu", batch_sizes=(5, 32), repeats: int = 20,
                  warmup: int = 3, seed: int = 0) -> list[dict]:
    """Time decoder forward (with the photometric loss) and forward + backward per batch size.

    model: FaceModel (decoded on its training region, model.submesh(model.face_region));
    returns one row per batch size: median milliseconds per batch over `repeats` runs after
    `warmup` runs, and images per second of forward + backward.
    """
    device = torch.device(device)
    training = model.submesh(model.face_region)
    decoder = Decoder(training, camera).to(device)
    generator = torch.Generator().manual_seed(seed)
    size = camera.image_size
    rows = []
    for batch in batch_sizes:
        images = torch.rand(batch, 3, size, size, generator=generator).to(device)
        code = (0.1 * torch.randn(batch, decoder.code_size, generator=generator)).to(device).requires_grad_(True)

        def forward() -> torch.Tensor:
            return photometric_loss(images, decoder(code), decoder.face_mask).sum()

        def forward_backward() -> None:
            code.grad = None
            forward().backward()

        timings = {}
        for name, step in (("forward", forward), ("forward_backward", forward_backward)):
            for _ in range(warmup):
                step()
            _synchronise(device)
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                step()
                _synchronise(device)
                seconds.append(time.perf_counter() - start)
            timings[name] = statistics.median(seconds)
        rows.append({
            "bench": "decoder+photometric",
            "device": str(device),
            "threads": torch.get_num_threads(),
            "vertices": training.n_vertices,
            "batch": batch,
            "forward_ms": 1000 * timings["forward"],
            "forward_backward_ms": 1000 * timings["forward_backward"],
            "per_image_ms": 1000 * timings["forward_backward"] / batch,
            "images_per_s": batch / timings["forward_backward"],
        })
    return rows


def bench_renderer(model, camera: PinholeCamera, n_images: int = 50, supersample: int = 1,
                   seed: int = 0) -> dict:
    """Images per second of the ray-cast renderer on the region images show (`FaceModel.drawn`) at
    random small poses and random shape and expression.

    Decoding is done beforehand and not timed. Returns one row; its 'images_per_s' is the figure.
    """
    region_model = model.drawn()
    decoder = Decoder(region_model, camera)
    layout = decoder.layout
    generator = torch.Generator().manual_seed(seed)
    angles = torch.tensor([0.15, 0.5, 0.1])  # max |pitch|, |yaw|, |roll| in radians
    code = layout.join(
        shape=0.5 * torch.randn(n_images, layout.n_shape, generator=generator),
        expression=0.5 * torch.randn(n_images, layout.n_expression, generator=generator),
        rotation=(2 * torch.rand(n_images, 3, generator=generator) - 1) * angles,
        translation=torch.randn(n_images, 3, generator=generator),
    )
    with torch.no_grad():
        decoded = decoder(code)
    vertices, colours = decoded.vertices.numpy(), decoded.colours.numpy()
    triangles = np.ascontiguousarray(region_model.triangles, dtype=np.intp)
    render(vertices[0], triangles, colours[0], camera, supersample=supersample)  # warm-up: ray grid cache
    start = time.perf_counter()
    covered = 0.0
    for b in range(n_images):
        covered += float(render(vertices[b], triangles, colours[b], camera, supersample=supersample).mask.mean())
    seconds = time.perf_counter() - start
    return {
        "bench": "render",
        "region": model.drawn_region() or "all",
        "vertices": region_model.n_vertices,
        "triangles": len(triangles),
        "image_size": camera.image_size,
        "supersample": supersample,
        "images": n_images,
        "coverage": covered / n_images,
        "images_per_s": n_images / seconds,
    }


def format_rows(rows: list[dict]) -> str:
    """A plain-text table of benchmark rows (columns: the union of keys, in first-seen order)."""
    if not rows:
        return "(no rows)"
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value) -> str:
        if isinstance(value, float):
            if value == 0 or not math.isfinite(value):
                return f"{value:g}"
            digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
            return f"{value:.{digits}f}"
        return "" if value is None else str(value)

    table = [columns] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = ["  ".join(text.rjust(w) for text, w in zip(line, widths)) for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _median_seconds(fn, repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronise(device)
        start = time.perf_counter()
        fn()
        _synchronise(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _build(name: str, layout, seed: int, own: "EncoderSettings | None"):
    """The encoder as the settings build it, from its `encoders.<name>` settings `own` (module, options;
    None: a built-in encoder with its defaults)."""
    from mofa.encoders import build_encoder
    return build_encoder(name, layout, seed=seed, module=own.module if own else None,
                         options=own.options if own else None)


PRECISIONS = ("fp32", "bf16")
PEAK_MATMUL = 1024  # square matmul side (2 GFLOP: a second where bf16 is emulated, not minutes)
PEAK_CONV = (4, 64, 56)  # 3x3 conv, stride 1: batch, channels in = out, side (a VGG/ResNet middle layer)


def timed_precisions(wanted, device) -> list[str]:
    """The precisions to time for a list of 'fp32' / 'bf16' / 'auto' (auto: bf16 where it is native,
    `mofa.training.precision.resolve_precision`), each once, in order."""
    from mofa.training.precision import resolve_precision
    return list(dict.fromkeys(resolve_precision(p, device) for p in wanted))


def bench_peak(device="cpu", precisions=PRECISIONS, repeats: int = 3) -> list[dict]:
    """The roofline's compute ceiling on this device: GFLOP/s of a large square matmul and of a 3x3
    convolution (NCHW and channels_last), per precision; one row per (op, precision)."""
    device = torch.device(device)
    rows = []
    for precision in precisions:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(PEAK_MATMUL, PEAK_MATMUL, generator=g).to(device, dtype) for _ in range(2))
        t = _median_seconds(lambda: a @ b, repeats, 1, device)
        rows.append({"op": f"matmul {PEAK_MATMUL}^3", "precision": precision, "gflops": 2 * PEAK_MATMUL ** 3 / t / 1e9})
        batch, channels, side = PEAK_CONV
        x = torch.randn(batch, channels, side, side, generator=g).to(device, dtype)
        w = torch.randn(channels, channels, 3, 3, generator=g).to(device, dtype)
        flops = 2 * batch * channels * channels * 9 * side * side
        for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            xx, ww = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
            t = _median_seconds(lambda: torch.nn.functional.conv2d(xx, ww, padding=1), repeats, 1, device)
            rows.append({"op": f"conv3x3 {channels}->{channels} {side}px b{batch} {layout}", "precision": precision,
                         "gflops": flops / t / 1e9})
    return rows


def peak_gflops(peak_rows: list[dict]) -> dict[str, float]:
    """{precision: the best GFLOP/s of any op in `bench_peak`'s rows}."""
    best: dict[str, float] = {}
    for row in peak_rows:
        best[row["precision"]] = max(best.get(row["precision"], 0.0), row["gflops"])
    return best


def encoder_step_flops(encoder: torch.nn.Module, images: torch.Tensor) -> int:
    """FLOPs of the encoder's forward and backward on `images` (torch's FlopCounterMode: matmuls and
    convolutions), the work a training step spends in the encoder."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        encoder(images).float().sum().backward()
    encoder.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def precision_agreement(encoder: torch.nn.Module, decoder, images: torch.Tensor, px: int, optimiser_name: str,
                        precisions=PRECISIONS) -> dict[str, dict[str, float]]:
    """{precision: {"loss", "grad_norm"}} of the second training step from the same weights and batch:
    one optimiser step, then the loss and the encoder's gradient norm, each precision on its own copy
    and with the same random numbers (dropout masks), so that the precisions differ in their arithmetic
    alone."""
    import copy

    from mofa.losses import mofa_loss
    from mofa.training.precision import encode, prepare_encoder
    from mofa.training.trainer import TrainSettings, encoder_input, make_optimiser

    out = {}
    for precision in precisions:
        model = prepare_encoder(copy.deepcopy(encoder), precision).train()
        optimiser = make_optimiser(model, TrainSettings(iterations=1, optimiser=optimiser_name))
        with torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
            torch.manual_seed(0)
            for step in range(2):
                optimiser.zero_grad(set_to_none=True)
                loss = mofa_loss(decoder, encode(model, encoder_input(images, px), precision), images).total
                loss.backward()
                if step == 0:
                    optimiser.step()
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
        out[precision] = {"loss": float(loss.detach()), "grad_norm": float(norm)}
    return out


def bench_train(model, camera: PinholeCamera, encoders=("alexnet", "vgg_face", "dlib_resnet"), batch_sizes=(32,),
                input_size: int = 240, device="cpu", repeats: int = 3, warmup: int = 1, seed: int = 0,
                options: Mapping[str, "EncoderSettings"] | None = None, precisions=("fp32",),
                peak: Mapping[str, float] | None = None) -> list[dict]:
    """Training throughput per encoder, precision and batch size: one optimiser step (encoder forward
    under `mofa.training.precision.encode`, decoder, photometric loss + regulariser, backward, update;
    AdaDelta, or the encoder's own optimiser), the share of it spent in decoder + loss (forward and
    backward on the code alone, always fp32), the encoder's achieved GFLOP/s (`encoder_step_flops` over
    the step) and its fraction of `peak` ({precision: GFLOP/s}, from `bench_peak`), and, on rows other
    than fp32, the relative difference to fp32 of the loss and gradient norm of the second step
    (`precision_agreement`). options: the settings' `encoders` (`mofa.settings.EncoderSettings`): `<name>.module` registers an
    encoder of your own, `<name>.options` its constructor's arguments, `<name>.input_size` and
    `<name>.optimiser` replace `input_size` and AdaDelta."""
    import copy

    from mofa.losses import mofa_loss
    from mofa.training.precision import encode, prepare_encoder
    from mofa.training.trainer import TrainSettings, encoder_input, make_optimiser

    device = torch.device(device)
    decoder = Decoder(model.submesh(model.face_region), camera).to(device)
    size = camera.image_size
    rows = []
    for name in encoders:
        own = (options or {}).get(name)
        encoder = _build(name, decoder.layout, seed, own).to(device).train()
        optimiser_name = (own.optimiser if own else None) or "adadelta"
        px = (own.input_size if own else None) or input_size
        for batch in batch_sizes:
            images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)
            agreement = (precision_agreement(encoder, decoder, images, px, optimiser_name, precisions)
                         if len(precisions) > 1 else {})
            flops = encoder_step_flops(encoder, encoder_input(images, px))
            code = torch.zeros(batch, decoder.code_size, device=device, requires_grad=True)

            def decoder_and_loss() -> None:
                code.grad = None
                mofa_loss(decoder, code, images).total.backward()

            t_dec = _median_seconds(decoder_and_loss, max(repeats, 5), warmup, device)
            for precision in precisions:
                model = prepare_encoder(copy.deepcopy(encoder), precision).train()
                optimiser = make_optimiser(model, TrainSettings(iterations=1, optimiser=optimiser_name))

                def step() -> None:
                    optimiser.zero_grad(set_to_none=True)
                    mofa_loss(decoder, encode(model, encoder_input(images, px), precision), images).total.backward()
                    optimiser.step()

                t_step = _median_seconds(step, repeats, warmup, device)
                achieved = flops / max(t_step - t_dec, 1e-9) / 1e9
                row = {"encoder": name, "precision": precision, "batch": batch, "input_px": px,
                       "step_ms": 1e3 * t_step, "images_per_s": batch / t_step, "decoder_loss_ms": 1e3 * t_dec,
                       "decoder_loss_share": t_dec / t_step, "encoder_gflop_per_step": flops / 1e9,
                       "encoder_gflops": achieved,
                       "peak_fraction": achieved / peak[precision] if peak and precision in peak else None,
                       "device": str(device)}
                if precision != "fp32" and "fp32" in agreement:
                    ref, got = agreement["fp32"], agreement[precision]
                    row["loss_rel_diff"] = abs(got["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-30)
                    row["grad_norm_rel_diff"] = abs(got["grad_norm"] - ref["grad_norm"]) / max(ref["grad_norm"], 1e-30)
                rows.append(row)
    return rows


def bench_infer(model, camera: PinholeCamera, encoders=("alexnet", "vgg_face", "dlib_resnet"), batch_sizes=(1, 32),
                input_size: int = 240, device="cpu", repeats: int = 5, warmup: int = 1, seed: int = 0,
                options: Mapping[str, "EncoderSettings"] | None = None, precisions=("fp32",)) -> list[dict]:
    """Inference time per image: encoder forward (under each precision) and decoder, no gradients,
    eval mode (options: as `bench_train`)."""
    from mofa.training.precision import encode, prepare_encoder
    from mofa.training.trainer import encoder_input

    device = torch.device(device)
    decoder = Decoder(model.submesh(model.face_region), camera).to(device)
    rows = []
    for name in encoders:
        own = (options or {}).get(name)
        px = (own.input_size if own else None) or input_size
        for precision in precisions:
            encoder = prepare_encoder(_build(name, decoder.layout, seed, own).to(device), precision).eval()
            for batch in batch_sizes:
                images = torch.rand(batch, 3, camera.image_size, camera.image_size,
                                    generator=torch.Generator().manual_seed(seed)).to(device)

                def infer() -> None:
                    with torch.no_grad():
                        decoder(encode(encoder, encoder_input(images, px), precision))

                t = _median_seconds(infer, repeats, warmup, device)
                rows.append({"encoder": name, "precision": precision, "batch": batch, "input_px": px,
                             "ms_per_image": 1e3 * t / batch, "device": str(device)})
    return rows


def format_load(summary: Mapping) -> str:
    """`mofa.machine_load.LoadMonitor.summary` as one line."""
    def share(v):
        return "n/a" if v is None else f"{100 * v:.0f} %"
    return (f"load average {summary['load_1min_before']:.2f} before, {summary['load_1min_after']:.2f} after; "
            f"other processes' CPU {share(summary['other_cpu_before'])} before, {share(summary['other_cpu_during'])} "
            f"during, {share(summary['other_cpu_after'])} after"
            + ("" if summary["machine_idle"] is None else f" ({'idle' if summary['machine_idle'] else 'NOT idle'})"))


def device_name(device) -> str:
    """A readable name of the device the numbers were measured on."""
    import platform
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
