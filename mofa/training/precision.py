"""The encoder's arithmetic precision in training: fp32, or bf16 autocast where the hardware has bf16
units (`training.precision`). Autocast covers the encoder alone: its codes are cast back to fp32 before
the decoder, so the decoder, the losses, the light solve, the metrics and the optimiser state (the
fp32 master weights) stay fp32."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "auto")
# CPU flags (Linux /proc/cpuinfo) of native bf16 arithmetic: AVX512-BF16 (dot products, conversions)
# and AMX (tile matrix multiply). Without them PyTorch emulates bf16 through fp32 and gains nothing.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags, from the text of /proc/cpuinfo (read when not given); empty where there
    is no such file (macOS, Windows), which `auto` then treats as a CPU without bf16."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def resolve_precision(wanted: str, device: torch.device | str, flags: frozenset[str] | None = None) -> str:
    """'fp32' or 'bf16' for a `training.precision` value: 'auto' is bf16 on a CPU whose flags
    (`cpu_flags`, or `flags` given) include CPU_BF16_FLAGS, or on a CUDA device that supports bf16;
    fp32 elsewhere. An explicit 'bf16' is honoured anywhere (emulated, slowly, where not native)."""
    if wanted not in PRECISIONS:
        raise ValueError(f"training precision {wanted!r}: choose one of {', '.join(PRECISIONS)}")
    if wanted != "auto":
        return wanted
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if CPU_BF16_FLAGS & (cpu_flags() if flags is None else flags) else "fp32"
    return "fp32"


@contextlib.contextmanager
def encoder_autocast(device: torch.device | str, precision: str) -> Iterator[None]:
    """Autocast to bf16 for precision 'bf16' (on the device's type), a no-op for 'fp32'."""
    if precision == "fp32":
        yield
        return
    if precision != "bf16":
        raise ValueError(f"precision must be resolved to 'fp32' or 'bf16', got {precision!r}")
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        yield


def prepare_encoder(encoder: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The encoder ready for `encode` at `precision`: for bf16 its conv weights in channels_last (a 3x3
    conv in bf16 ran 2.3x faster so, in fp32 1.3x, `mofa bench train`'s peak rows); fp32 is left as
    it is, so fp32 runs stay as they were. Call before building the optimiser."""
    return encoder.to(memory_format=torch.channels_last) if precision == "bf16" else encoder


def encode(encoder: torch.nn.Module, images: torch.Tensor, precision: str) -> torch.Tensor:
    """encoder(images) with the encoder under `encoder_autocast`: images (B, 3, S, S) -> codes (B, D)
    in float32 (bf16: images in channels_last, as `prepare_encoder` leaves the weights)."""
    if precision == "bf16":
        images = images.contiguous(memory_format=torch.channels_last)
    with encoder_autocast(images.device, precision):
        codes = encoder(images)
    return codes.float()
