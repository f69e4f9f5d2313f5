"""The encoder's arithmetic precision in training: fp32, or bf16 autocast where the hardware runs bf16
faster (`training.precision`). Autocast covers the encoder alone: its codes are cast back to fp32 before
the decoder, so the decoder, the losses, the light solve, the metrics and the optimiser state (the
fp32 master weights) stay fp32."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

PRECISIONS = ("fp32", "bf16", "auto")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags, from the text of /proc/cpuinfo (read when not given); empty where there
    is no such file (macOS, Windows), which `auto` then treats as a CPU without bf16."""
    return frozenset(_cpuinfo_field(cpuinfo, ("flags", "Features")).split())


def cpu_vendor(cpuinfo: str | None = None) -> str:
    """The CPU's vendor_id ('AuthenticAMD', 'GenuineIntel'), '' where /proc/cpuinfo does not say."""
    return _cpuinfo_field(cpuinfo, ("vendor_id",)).strip()


def _cpuinfo_field(cpuinfo: str | None, keys: tuple[str, ...]) -> str:
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value
    return ""


def cpu_bf16_pays(cpuinfo: str | None = None) -> bool:
    """Whether bf16 matrix arithmetic outruns fp32 on this CPU (from /proc/cpuinfo's text, read when not
    given): with AMX tiles (amx_bf16), or with AVX512-BF16 on AMD (Zen 4 on: its bf16 dot products do
    twice the multiply-adds of its fp32 FMAs). Not on an Intel CPU with AVX512-BF16 but no AMX
    (Cooper Lake, or Sapphire Rapids with AMX hidden by a hypervisor): there bf16 dot products issue no
    faster than fp32 FMAs, and a 1024^3 matmul ran at 152 GFLOP/s in bf16 against 254 in fp32
    (docs/cpu-findings.md, "bf16 on an Intel CPU without AMX"). Nor without these flags, where PyTorch
    emulates bf16 through fp32."""
    flags = cpu_flags(cpuinfo)
    return "amx_bf16" in flags or ("avx512_bf16" in flags and cpu_vendor(cpuinfo) == "AuthenticAMD")


def resolve_precision(wanted: str, device: torch.device | str, cpuinfo: str | None = None) -> str:
    """'fp32' or 'bf16' for a `training.precision` value: 'auto' is bf16 on a CPU where
    `cpu_bf16_pays` (this machine's /proc/cpuinfo, or the `cpuinfo` text given), or on a CUDA device
    that supports bf16; fp32 elsewhere. An explicit 'bf16' is honoured anywhere (slowly where bf16 is
    emulated)."""
    if wanted not in PRECISIONS:
        raise ValueError(f"training precision {wanted!r}: choose one of {', '.join(PRECISIONS)}")
    if wanted != "auto":
        return wanted
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_bf16_pays(cpuinfo) else "fp32"
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
