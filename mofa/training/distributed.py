"""Training on several processes with torch.distributed (started by `torchrun`): the process group,
this process's share of a global batch, gradient averaging through DistributedDataParallel, and the
guard that lets rank 0 alone write.

A run on W processes follows the single-process run of the same config: every process draws the same
global batch (same seed, same sampler, the same `data.batch` call, so a source that composes a batch,
like `MixedSource`, composes it as one process would) and keeps its contiguous slice (`World.share`).
Each slice's loss, a mean over its images, is weighted by W * (its images / batch) before backward, so
DDP's average of the W gradients is the gradient of the global batch mean, for any batch size.
Dropout masks are drawn for the whole global batch and sliced (`GlobalBatchDropout`), and data-dependent
buffers (`Encoder.calibrate`) are rank 0's (DDP broadcasts them when it wraps the encoder). The weights
then equal one process's up to the order of float sums.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mofa.errors import MofaError

log = logging.getLogger(__name__)
# Rank 0 evaluates alone (and a stage's rank 0 scores a trained encoder) while the others wait in a
# collective: give that wait room beyond torch's default (10 min for NCCL).
TIMEOUT = datetime.timedelta(hours=2)


def launched_processes() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank: the process group's, else torchrun's RANK (0 outside a launcher)."""
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this process writes: rank 0, or the only process."""
    return rank() == 0


def init(device: torch.device | str) -> torch.device:
    """Join the process group torchrun describes (WORLD_SIZE > 1), once: NCCL for a CUDA device, each
    process on the GPU of its LOCAL_RANK; gloo on the CPU. Returns the device this process trains on
    (the same device outside a launcher)."""
    device = torch.device(device)
    if launched_processes() == 1:
        return device
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise MofaError(f"torchrun started {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this node but "
                            f"torch sees {torch.cuda.device_count()} GPU(s): start at most one process per GPU")
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT,
                                device_id=device if device.type == "cuda" else None)
        log.info("process %d of %d (%s, %s)", dist.get_rank(), dist.get_world_size(), dist.get_backend(), device)
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def relaunch_command(processes: int, module: str, argv: Sequence[str]) -> list[str]:
    """The command that runs `python -m module argv` on `processes` processes of this machine. The
    `--` keeps torchrun's parser off argv (it would take `--log` for an abbreviation of its own)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
            "-m", module, "--", *argv]


def relaunch(processes: int, module: str, argv: Sequence[str]) -> int:
    """Run `python -m module argv` under torchrun on `processes` processes; its exit status."""
    command = relaunch_command(processes, module, argv)
    log.info("relaunching on %d processes: %s", processes, " ".join(command))
    return subprocess.call(command)


def shares(total: int, world: int) -> list[slice]:
    """Contiguous slices of range(total) for ranks 0..world-1, sizes differing by at most one."""
    if world > total:
        raise MofaError(f"a batch of {total} images cannot be shared by {world} processes: use at most "
                        f"{total} processes or a larger training.batch_size")
    bounds = np.cumsum([0] + [total // world + (r < total % world) for r in range(world)])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class GlobalBatchDropout(nn.Dropout):
    """nn.Dropout whose mask is drawn for the whole global batch ((total, ...) as one process would
    draw it, from the same generator state) and sliced to this process's `share`. Without a share (or
    in eval mode, or p = 0) it is nn.Dropout."""
    share: tuple[slice, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.share is None:
            return super().forward(x)
        part, total = self.share
        shape = (total, *x.shape[1:])
        if x.is_cuda:  # one process takes the fused kernel: the same kernel on ones gives its mask x scale
            noise = torch.native_dropout(torch.ones(shape, dtype=x.dtype, device=x.device), self.p, True)[0]
        else:  # as ATen's CPU dropout: a Bernoulli(1 - p) mask divided by 1 - p, then a product
            noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * noise[part]


def _swap_dropout(module: nn.Module, share: tuple[slice, int] | None) -> None:
    """Every nn.Dropout in `module` as a GlobalBatchDropout with `share` (None: back to nn.Dropout)."""
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout) and type(child) in (nn.Dropout, GlobalBatchDropout):
                new = (GlobalBatchDropout if share is not None else nn.Dropout)(child.p, child.inplace)
                new.train(child.training)
                if share is not None:
                    new.share = share
                parent._modules[name] = new


@dataclasses.dataclass(frozen=True)
class World:
    """The processes a run trains on: this one's rank and their number (1: a plain single process)."""
    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls, device: torch.device | str = "cpu") -> "World":
        """The process group (joined here under torchrun if the stage has not), else one process."""
        if launched_processes() > 1:
            init(device)
        if not dist.is_initialized():
            return cls()
        return cls(dist.get_rank(), dist.get_world_size())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batch_size: int) -> slice:
        """This process's positions in a global batch of `batch_size`."""
        return shares(batch_size, self.size)[self.rank]

    def local_batch(self, data, indices: np.ndarray, device) -> dict[str, torch.Tensor]:
        """This process's slice of the global batch data.batch(indices)."""
        if self.size == 1:
            return data.batch(indices, device)
        part = self.share(len(indices))
        return {k: v[part].to(device) for k, v in data.batch(indices, "cpu").items()}

    def wrap(self, encoder: nn.Module, batch_size: int, device: torch.device) -> nn.Module:
        """What to call for the training forward: the encoder itself, or on several processes the encoder
        in DistributedDataParallel (its parameters and buffers now rank 0's) with global-batch dropout.
        `unwrap` undoes the dropout change."""
        if self.size == 1:
            return encoder
        _swap_dropout(encoder, (self.share(batch_size), batch_size))
        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(encoder, device_ids=ids, broadcast_buffers=False)

    def unwrap(self, encoder: nn.Module) -> None:
        if self.size > 1:
            _swap_dropout(encoder, None)

    def scaled(self, loss: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The local batch-mean loss weighted so that DDP's gradient average is the global batch mean's."""
        if self.size == 1:
            return loss
        part = self.share(batch_size)
        return loss * (self.size * (part.stop - part.start) / batch_size)

    def batch_means(self, values: Mapping[str, float], batch_size: int) -> dict[str, float]:
        """Local batch means -> the global batch's (one all-reduce; the same on every process)."""
        if self.size == 1:
            return dict(values)
        part = self.share(batch_size)
        backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        sums = torch.tensor([float(v) * (part.stop - part.start) for v in values.values()],
                            dtype=torch.float64, device=backend_device)
        dist.all_reduce(sums)
        return {k: float(s) / batch_size for k, s in zip(values, sums.tolist())}

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def from_main(self, value):
        """Rank 0's `value` (a picklable object) on every process."""
        if self.size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
