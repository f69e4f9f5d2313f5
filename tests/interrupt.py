"""A training run killed mid-way, for the resume tests (tests/ is on sys.path under pytest)."""
from __future__ import annotations


class Killed(Exception):
    pass


class DiesAt:
    """Training data that raises once it has served `calls_before_death` batches, like a killed process."""

    def __init__(self, data, calls_before_death: int):
        self.data, self.left = data, calls_before_death

    def __len__(self):
        return len(self.data)

    def batch(self, indices, device="cpu"):
        self.left -= 1
        if self.left < 0:
            raise Killed
        return self.data.batch(indices, device)
