"""Runs of `mofa.training.trainer.train` for tests/test_distributed.py, started by torchrun (or plain
python for one process). argv[1]: a JSON file {decoder, train, test, runs: [{run_dir, dies_after}]};
dies_after: the number of batches a run gets before its data raises (a killed run), or null. Then
STAGE_ARGS, which must arrive as given (torchrun's parser would take a stage's --log for its own)."""
from __future__ import annotations

import json
import sys

import torch

from mofa.data.synthetic import SyntheticSet
from mofa.training.distributed import rank
from mofa.training.evaluate import synthetic_evaluator
from mofa.training.trainer import train

from test_distributed import LOSS, SETTINGS, STAGE_ARGS, DiesAt, Killed, fresh_encoder  # tests/ is on PYTHONPATH


def main(spec_path: str, rest: list[str]) -> None:
    if rest != STAGE_ARGS:
        raise SystemExit(f"the worker got {rest}, not {STAGE_ARGS}")
    torch.set_num_threads(1)
    spec = json.loads(open(spec_path).read())
    decoder = torch.load(spec["decoder"], weights_only=False)
    train_set, test_set = SyntheticSet(spec["train"]), SyntheticSet(spec["test"])
    evaluate = synthetic_evaluator(decoder, test_set, 4, SETTINGS.input_size)
    for run in spec["runs"]:
        data = train_set if run["dies_after"] is None else DiesAt(train_set, run["dies_after"])
        try:
            train(run["run_dir"], fresh_encoder(decoder), decoder, data, SETTINGS, LOSS, evaluate)
        except Killed:
            print(f"rank {rank()}: {run['run_dir']} killed as asked", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
