"""How busy the machine was around a timing: load average and the CPU share of other processes,
so that a speed table can say when its numbers were measured under load."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# Other processes using more than this share of all cores (0-1) make a timing "not idle".
BUSY_SHARE = 0.10
SAMPLE_S = 1.0  # window of the before/after samples


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies over all cores since boot, from /proc/stat; None where it is missing."""
    try:
        fields = PROC_STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])  # guest time is already inside user


@dataclasses.dataclass
class _Mark:
    wall: float
    own_cpu: float
    jiffies: tuple[int, int] | None


def _mark() -> _Mark:
    return _Mark(time.perf_counter(), time.process_time(), _cpu_jiffies())


def other_cpu_share(start: _Mark, end: _Mark) -> float | None:
    """Share (0-1) of all cores busy with other processes between two marks: the machine's busy share
    minus this process's CPU time over the wall time times the core count; None without /proc/stat."""
    if start.jiffies is None or end.jiffies is None:
        return None
    busy, total = (e - s for e, s in zip(end.jiffies, start.jiffies))
    if total <= 0:
        return None
    wall = max(end.wall - start.wall, 1e-9)
    own = (end.own_cpu - start.own_cpu) / (wall * (os.cpu_count() or 1))
    return max(0.0, busy / total - own)


def sample_other_share(seconds: float = SAMPLE_S) -> float | None:
    """Other processes' CPU share over the next `seconds` (this process sleeping)."""
    start = _mark()
    time.sleep(seconds)
    return other_cpu_share(start, _mark())


class LoadMonitor:
    """Brackets a timing: `with LoadMonitor() as load: ...`, then `load.summary()`. Samples other
    processes' CPU share for SAMPLE_S before and after (this process idle) and over the timing itself."""

    def __init__(self, sample_s: float = SAMPLE_S):
        self.sample_s = sample_s
        self.before: dict[str, float | None] = {}
        self.after: dict[str, float | None] = {}
        self._start: _Mark | None = None
        self.during: float | None = None

    def __enter__(self) -> "LoadMonitor":
        self.before = {"load_1min": os.getloadavg()[0], "other_cpu": sample_other_share(self.sample_s)}
        self._start = _mark()
        return self

    def __exit__(self, *exc) -> None:
        self.during = other_cpu_share(self._start, _mark())
        self.after = {"load_1min": os.getloadavg()[0], "other_cpu": sample_other_share(self.sample_s)}

    @property
    def idle(self) -> bool | None:
        """False when other processes used more than BUSY_SHARE of the cores before, during or after;
        None where this system cannot tell (no /proc/stat)."""
        shares = [s for s in (self.before.get("other_cpu"), self.during, self.after.get("other_cpu")) if s is not None]
        return None if not shares else max(shares) <= BUSY_SHARE

    def summary(self) -> dict[str, float | bool | None]:
        """Columns for a speed table: load averages and other processes' CPU shares, and `machine_idle`."""
        return {"load_1min_before": self.before.get("load_1min"), "load_1min_after": self.after.get("load_1min"),
                "other_cpu_before": self.before.get("other_cpu"), "other_cpu_during": self.during,
                "other_cpu_after": self.after.get("other_cpu"), "machine_idle": self.idle}

    def note(self) -> str:
        """One phrase for a table title: empty when idle, a warning with the shares when not."""
        if self.idle is not False:
            return ""
        worst = max(s for s in (self.before.get("other_cpu"), self.during, self.after.get("other_cpu")) if s is not None)
        return (f"MEASURED UNDER LOAD: other processes used up to {100 * worst:.0f} % of the cores "
                f"(load average {self.before.get('load_1min'):.2f} before, {self.after.get('load_1min'):.2f} after)")
