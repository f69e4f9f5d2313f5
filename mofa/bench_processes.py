"""Training throughput on 1..N processes (`mofa bench train --processes N`): the trainer's step
(encoder forward on this process's share, decoder, loss, backward with DDP's gradient all-reduce,
AdaDelta or the encoder's optimiser) on one global batch, timed under torchrun for each process count.

    torchrun --standalone --nproc-per-node 2 -m mofa.bench_processes --config default --encoder alexnet
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

import torch


def bench_under_torchrun(config: str, encoder: str, processes: int, repeats: int = 5, warmup: int = 2,
                         device: str | None = None, input_size: int | None = None) -> dict:
    """One row: the median seconds of a global training step on `processes` processes (one thread each
    on the CPU), images/s of the global batch, and how the step was run."""
    from mofa.training.distributed import relaunch_command
    argv = ["--config", config, "--encoder", encoder, "--repeats", str(repeats), "--warmup", str(warmup)]
    argv += ["--device", device] if device else []
    argv += ["--input-size", str(input_size)] if input_size else []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(relaunch_command(processes, "mofa.bench_processes", argv), env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        from mofa.errors import MofaError
        said = [line.split("MofaError: ", 1)[1] for line in done.stderr.splitlines() if "MofaError: " in line]
        last = said or [line for line in done.stderr.splitlines() if line.strip()] or ["no output"]
        raise MofaError(f"mofa bench on {processes} processes failed ({done.returncode}): {' '.join(last[-1].split())[:300]}")
    return json.loads(lines[-1])


def _worker(args: argparse.Namespace) -> None:
    """Every process of one torchrun: build the step as the trainer does, time it, rank 0 prints JSON."""
    import torch.distributed as dist

    from mofa.bench import _build
    from mofa.config import select_device
    from mofa.decoder import Decoder
    from mofa.facemodel import build_face_model
    from mofa.losses import mofa_loss
    from mofa.training.distributed import World, init
    from mofa.settings import load_settings
    from mofa.training.trainer import TrainSettings, encoder_input, make_optimiser

    settings = load_settings(args.config, overrides={"device": args.device} if args.device else None)
    settings = settings.for_encoder(args.encoder)
    device = init(select_device(settings.device))
    world = World.current(device)
    tr = settings.training
    batch, px = tr.batch_size, args.input_size or tr.input_size
    model, camera = build_face_model(settings.face_model), settings.camera
    decoder = Decoder(model.submesh(model.face_region), camera).to(device)
    encoder = _build(args.encoder, decoder.layout, settings.seed, settings.encoders.get(args.encoder)).to(device).train()
    optimiser = make_optimiser(encoder, TrainSettings(iterations=1, optimiser=tr.optimiser, lr=tr.lr, lr_z=tr.lr_z,
                                                      backbone_lr_scale=tr.backbone_lr_scale))
    net = world.wrap(encoder, batch, device)
    size = camera.image_size
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))[world.share(batch)].to(device)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        world.scaled(mofa_loss(decoder, net(encoder_input(images, px)), images).total, batch).backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = []
    for k in range(args.warmup + args.repeats):
        world.barrier()
        start = time.perf_counter()
        step()
        world.barrier()
        if k >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    if world.is_main:
        print(json.dumps({"encoder": args.encoder, "processes": world.size, "batch": batch, "input_px": px,
                          "step_ms": 1e3 * seconds, "images_per_s": batch / seconds, "device": str(device),
                          "threads_per_process": torch.get_num_threads()}), flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--encoder", default="alexnet")
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--input-size", type=int)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    _worker(parser.parse_args(argv))


if __name__ == "__main__":
    main()
