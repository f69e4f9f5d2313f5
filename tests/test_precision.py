"""training.precision: auto's choice from the CPU flags, bf16 autocast over the encoder alone, and fp32
runs unchanged by the precision code."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from mofa.data.synthetic import CodeDistribution, SyntheticSet, generate_split
from mofa.decoder import Decoder, PinholeCamera
from mofa.encoders import build_encoder
from mofa.losses import LossWeights
from mofa.training import precision
from mofa.training.trainer import TrainSettings, train

CAMERA = PinholeCamera()
ZEN1 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu sse sse2 avx avx2 fma f16c\n"  # no bf16
ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
SAPPHIRE_RAPIDS = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: avx512f avx512_bf16 amx_tile amx_bf16\n"
# Sapphire Rapids with AMX hidden by the hypervisor (as the machine of docs/cpu-findings.md's
# "bf16 on an Intel CPU without AMX"): AVX512-BF16 alone, where bf16 ran 0.6x fp32.
INTEL_NO_AMX = "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: avx512f avx512_vnni avx512_bf16 avx_vnni\n"


@pytest.mark.parametrize("cpuinfo, expected", [(ZEN1, "fp32"), (ZEN4, "bf16"), (SAPPHIRE_RAPIDS, "bf16"),
                                               (INTEL_NO_AMX, "fp32"), ("", "fp32")])
def test_auto_is_bf16_only_where_the_cpu_runs_it_faster(cpuinfo, expected):
    assert precision.resolve_precision("auto", "cpu", cpuinfo) == expected
    assert precision.resolve_precision("fp32", "cpu", cpuinfo) == "fp32"
    assert precision.resolve_precision("bf16", "cpu", cpuinfo) == "bf16"  # asked for: honoured, emulated or not


def test_auto_reads_this_machines_cpuinfo():
    text = precision.CPUINFO.read_text() if precision.CPUINFO.exists() else ""
    flags, vendor = set(text.split()), "AuthenticAMD" in text
    pays = "amx_bf16" in flags or ("avx512_bf16" in flags and vendor)
    assert precision.resolve_precision("auto", "cpu") == ("bf16" if pays else "fp32")


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="training precision 'fp16'"):
        precision.resolve_precision("fp16", "cpu")


def test_bf16_covers_the_encoder_only(small_face_model):
    decoder = Decoder(small_face_model, CAMERA)
    encoder = precision.prepare_encoder(build_encoder("alexnet", decoder.layout, seed=0), "bf16")
    seen = {}
    encoder.features.register_forward_hook(lambda m, i, o: seen.update(features=o.dtype))
    images = torch.rand(2, 3, 64, 64)
    codes = precision.encode(encoder, images, "bf16")
    assert seen["features"] == torch.bfloat16 and codes.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in encoder.parameters())  # fp32 master weights
    decoded = decoder(codes)  # outside autocast: the decoder computes in fp32
    assert decoded.vertices.dtype == torch.float32 and decoded.colours.dtype == torch.float32
    reference = precision.encode(build_encoder("alexnet", decoder.layout, seed=0), images, "fp32")
    assert torch.allclose(codes, reference, rtol=0.05, atol=1e-3)  # same function, to bf16 rounding


def _run(ict_model, tmp_path: Path, iterations: int = 8, **settings) -> torch.nn.Module:
    model = ict_model.truncated(8, 10, 8)
    for split, n in (("train", 24), ("test", 4)):
        generate_split(tmp_path / "syn", split, n, model, CAMERA, seed=0, dist=CodeDistribution(), progress=False)
    decoder = Decoder(model.submesh(model.face_region), CAMERA)
    encoder = build_encoder("alexnet", decoder.layout, rotation_bound_rad=1.0, seed=0)
    train(tmp_path / "run", encoder, decoder, SyntheticSet(tmp_path / "syn" / "train"),
          TrainSettings(iterations=iterations, batch_size=4, eval_at=(4,), checkpoint_every=3, input_size=64, seed=0,
                        progress=False, **settings), LossWeights())
    return encoder


def _weights_digest(encoder: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, value in encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_fp32_training_is_bit_identical_to_before_the_precision_code(ict_model, tmp_path, monkeypatch):
    """An fp32 run against the same run with the trainer's two precision hooks put back to what stood
    there before the precision code (86205de): `encoder(images)` and no memory-format change. A digest
    fixed once cannot serve: MKL's fp32 kernels round differently on AVX2 and AVX-512 CPUs."""
    from mofa.training import trainer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with_precision_code = _weights_digest(_run(ict_model, tmp_path / "now", precision="fp32"))
        # the same thread count and the real hooks: a check that the comparison can tell precisions apart
        bf16 = _weights_digest(_run(ict_model, tmp_path / "bf16", precision="bf16"))
        monkeypatch.setattr(trainer, "encode", lambda encoder, images, _precision: encoder(images))
        monkeypatch.setattr(trainer, "prepare_encoder", lambda encoder, _precision: encoder)
        before = _weights_digest(_run(ict_model, tmp_path / "before", precision="fp32"))
    finally:
        torch.set_num_threads(threads)
    assert with_precision_code == before
    assert bf16 != before


def test_a_bf16_run_trains_and_records_its_precision(ict_model, tmp_path):
    from mofa.training.trainer import CHECKPOINT, load_checkpoint
    encoder = _run(ict_model, tmp_path, iterations=3, precision="bf16")  # emulated on CPUs without bf16: slow
    assert all(torch.isfinite(p).all() for p in encoder.parameters())
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["settings"]["precision"] == "bf16"


def test_other_processes_cpu_share_from_two_marks(monkeypatch):
    from mofa import machine_load
    monkeypatch.setattr(machine_load.os, "cpu_count", lambda: 2)
    start = machine_load._Mark(wall=10.0, own_cpu=1.0, jiffies=(100, 1000))
    end = machine_load._Mark(wall=11.0, own_cpu=1.5, jiffies=(250, 1200))  # 75 % busy; this process: 0.5 s of 2 core-s
    assert machine_load.other_cpu_share(start, end) == pytest.approx(0.75 - 0.25)
    assert machine_load.other_cpu_share(start, machine_load._Mark(11.0, 1.5, None)) is None


def test_a_busy_machine_is_flagged():
    import subprocess
    import sys
    from mofa.machine_load import LoadMonitor
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with LoadMonitor(sample_s=0.5) as load:
            pass
    finally:
        spinner.kill()
        spinner.wait()
    summary = load.summary()
    assert summary["machine_idle"] is False and summary["other_cpu_before"] >= 0.3  # one core of two, at least
    assert "MEASURED UNDER LOAD" in load.note()


def test_the_bf16_agreement_compares_arithmetic_alone(small_face_model):
    """`mofa bench`'s bf16-vs-fp32 figures: with dropout in training mode, both precisions see the same
    masks, so the same call gives the same figures, and fp32 against itself differs by nothing."""
    from mofa.bench import precision_agreement
    camera = PinholeCamera(image_size=64, focal_length_px=320.0)
    decoder = Decoder(small_face_model, camera)
    encoder = build_encoder("alexnet", decoder.layout, seed=0, dropout=0.5).train()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    first = precision_agreement(encoder, decoder, images, 64, "adadelta", ("fp32", "bf16"))
    assert precision_agreement(encoder, decoder, images, 64, "adadelta", ("fp32", "bf16")) == first
    twice = precision_agreement(encoder, decoder, images, 64, "adadelta", ("fp32",))["fp32"]
    assert twice == first["fp32"]
    assert first["bf16"] != first["fp32"]  # bf16 arithmetic does round differently
