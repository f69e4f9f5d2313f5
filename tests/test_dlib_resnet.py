"""dlib's face-recognition ResNet: the .dat reader (mofa/encoders/dlib_format.py), the PyTorch port checked
against dlib itself (the dlib-bin wheel, an independent reference), and the dlib_resnet encoder."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from mofa.decoder.layout import CodeLayout
from mofa.encoders import build_encoder
from mofa.encoders.dlib_format import DlibReader, face_resnet_path, read_dlib_network
from mofa.encoders.dlib_resnet import DlibResNetEncoder, load_dlib_face_resnet, spatial_sizes
from mofa.errors import MofaError

LAYOUT = CodeLayout(n_shape=5, n_expression=4, n_reflectance=6)
TOLERANCE = 1e-4  # max |port - dlib| over the 128 descriptor entries


# -- a tiny writer of dlib's encoding, written from serialize.h / float_details.h ------------------

def dlib_int(value: int) -> bytes:
    """Control byte (byte count | 0x80 if negative), then the magnitude little-endian (0 -> 1 byte)."""
    magnitude = abs(value).to_bytes(max(1, (abs(value).bit_length() + 7) // 8), "little")
    return bytes([len(magnitude) | (0x80 if value < 0 else 0)]) + magnitude


def dlib_float(value: float) -> bytes:
    """dlib's float_details of a double: a 53-bit mantissa, low zero bytes shifted off, then the exponent."""
    if math.isnan(value) or math.isinf(value):
        return dlib_int(0) + dlib_int(32002 if math.isnan(value) else 32000 if value > 0 else 32001)
    fraction, exponent = math.frexp(value)
    mantissa, exponent = int(fraction * (1 << 53)), exponent - 53
    for _ in range(8):
        if mantissa & 0xFF:
            break
        mantissa, exponent = mantissa >> 8, exponent + 8
    return dlib_int(mantissa) + dlib_int(exponent)


def dlib_string(text: str) -> bytes:
    return dlib_int(len(text)) + text.encode("ascii")


INTEGERS = [0, 1, -1, 7, 127, 128, 255, 256, -256, 4736, -32001, 2 ** 31, -(2 ** 40) - 3, 2 ** 63 - 1, -(2 ** 63 - 1)]
FLOATS = [0.0, 1.0, -1.0, 0.04, 0.6, 122.782, -3.25e-30, 1e300, float(np.float32(0.1)), math.inf, -math.inf]


def test_integer_encoding_matches_dlib_layout():
    assert dlib_int(0) == b"\x01\x00" and dlib_int(-1) == b"\x81\x01" and dlib_int(256) == b"\x02\x00\x01"


def test_reader_round_trips_integers_floats_strings_bools():
    data = b"".join(dlib_int(v) for v in INTEGERS) + b"".join(dlib_float(v) for v in FLOATS + [math.nan]) + \
        dlib_string("") + dlib_string("input_rgb_image_sized") + b"10"
    reader = DlibReader(data)
    assert [reader.integer() for _ in INTEGERS] == INTEGERS
    assert [reader.real() for _ in FLOATS] == FLOATS
    assert math.isnan(reader.real())
    assert reader.string() == "" and reader.string() == "input_rgb_image_sized"
    assert reader.boolean() is True and reader.boolean() is False
    assert reader.pos == len(data)


@pytest.mark.parametrize("data", [b"\x09" + bytes(9), b"\x11\x00", b"\x02\x01"],
                         ids=["9 bytes", "reserved bits", "short"])
def test_reader_rejects_bad_integers(data):
    with pytest.raises(MofaError, match=r"^x\.dat: .* at byte \d"):
        DlibReader(data, "x.dat").integer()


# -- the real file --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def records():
    return read_dlib_network(face_resnet_path())


@pytest.fixture(scope="module")
def network():
    return load_dlib_face_resnet()


def test_file_records(records):
    kinds = [r.kind for r in records]
    assert kinds[0] == "input" and kinds[-3:] == ["avg_pool", "fc", "loss"]
    assert [kinds.count(k) for k in ("con", "affine", "add_prev", "avg_pool", "tag_or_skip")] == [29, 29, 14, 5, 22]
    assert np.allclose(records[0].params["mean_rgb"], [122.782, 117.001, 104.298], atol=1e-4)
    assert records[0].params["size"] == (150, 150)
    assert records[-1].params == pytest.approx({"margin": 0.04, "distance_threshold": 0.6})
    assert records[-2].params["weight"].shape == (256, 128) and records[-2].params["bias"] is None
    convs = [r.params for r in records if r.kind == "con"]
    assert convs[0]["weight"].shape == (32, 3, 7, 7) and convs[0]["stride"] == (2, 2) and convs[0]["padding"] == (0, 0)
    assert all(c["padding"] == ((0, 0) if c["stride"] == (2, 2) else (1, 1)) for c in convs[1:])


def test_spatial_sizes_150_72_35_17_8_4_2(network):
    assert spatial_sizes(network, 150) == [150, 72, 35, 35, 17, 8, 4, 2]
    with torch.no_grad():
        x = torch.zeros(1, 3, 150, 150)
        sizes = [150, network.stem[0](x).shape[-1]]
        x = network.stem(x)
        sizes.append(x.shape[-1])
        for level in network.levels:
            if level[0].downsamples and x.shape[-1] == 8:  # at 8 px: strided branch 3x3, pooled shortcut 4x4
                assert level[0].branch(x).shape[-2:] == (3, 3) and level[0].shortcut(x).shape[-2:] == (4, 4)
            x = level(x)
            sizes.append(x.shape[-1])
    assert sizes == [150, 72, 35, 35, 17, 8, 4, 2] and tuple(x.shape[1:]) == (256, 2, 2)


def test_truncated_file_fails_naming_file_and_offset(tmp_path):
    path = tmp_path / "truncated.dat"
    path.write_bytes(face_resnet_path().read_bytes()[:100_000])
    with pytest.raises(MofaError) as error:
        read_dlib_network(path)
    message = str(error.value)
    assert str(path) in message and "at byte" in message and "con_4" in message and "\n" not in message


def test_corrupted_tag_fails_naming_file_tag_and_offset(tmp_path):
    data = bytearray(face_resnet_path().read_bytes())
    offset = data.index(b"\x01\x05con_4")  # the first convolution's tag: length 5, then the name
    data[offset + 3] = ord("X")
    path = tmp_path / "corrupted.dat"
    path.write_bytes(bytes(data))
    with pytest.raises(MofaError) as error:
        read_dlib_network(path)
    message = str(error.value)
    assert str(path) in message and "'cXn_4'" in message and f"at byte {offset}" in message and "\n" not in message


# -- the independent reference: dlib itself -------------------------------------------------------

def _dlib():
    try:
        import dlib
    except ImportError:
        pytest.fail("dlib is not importable: install the test extras (pip install -e '.[test]', which "
                    "includes dlib-bin), the reference for the dlib_resnet port")
    return dlib


def _face_chips(ibug_dir, count: int) -> list[np.ndarray]:
    """150x150x3 uint8 RGB crops: a square 1.3x the 68-landmark box around each face, resized."""
    chips = []
    for pts in sorted(ibug_dir.glob("*.pts"))[:count]:
        lines = pts.read_text().splitlines()
        points = np.array([[float(v) for v in line.split()] for line in lines[lines.index("{") + 1:lines.index("}")]])
        (x0, y0), (x1, y1) = points.min(0), points.max(0)
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.65 * max(x1 - x0, y1 - y0)
        photo = next(p for p in sorted(pts.parent.glob(pts.stem + ".*")) if p.suffix != ".pts")  # jpg, png or ppm
        image = Image.open(photo).convert("RGB")
        box = tuple(int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))
        chips.append(np.asarray(image.crop(box).resize((150, 150), Image.BILINEAR)))
    return chips


def test_descriptors_equal_dlib(network, ibug_dir):
    dlib = _dlib()
    reference = dlib.face_recognition_model_v1(str(face_resnet_path()))
    chips = _face_chips(ibug_dir, 4) + [np.random.default_rng(0).integers(0, 256, (150, 150, 3), dtype=np.uint8)]
    expected = np.stack([np.array(reference.compute_face_descriptor(chip)) for chip in chips])
    with torch.no_grad():
        ours = network(torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255.0).double().numpy()
    assert expected.shape == ours.shape == (5, 128)
    assert np.abs(expected).max() > 0.1  # not a degenerate output
    difference = np.abs(ours - expected).max()
    assert difference < TOLERANCE, f"max |port - dlib| = {difference:.2e}"


# -- the encoder ----------------------------------------------------------------------------------

def test_encoder_builds_pretrained_and_outputs_the_zero_code(network):
    encoder = build_encoder("dlib_resnet", LAYOUT).eval()
    assert isinstance(encoder, DlibResNetEncoder) and encoder.pretrained
    description = encoder.init_description
    assert "CC0 public domain" in description and "dlib_face_recognition_resnet_model_v1.dat" in description
    assert encoder.code_head.others.in_features == 256 * 2 * 2 and encoder.min_input_size == 103
    images = torch.rand(2, 3, 150, 150, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(encoder(images), torch.zeros(2, LAYOUT.size))
        assert encoder(images[:, :, :128, :128]).shape == (2, LAYOUT.size)
        # the encoder's trunk is the reference-checked network's, with the same normalisation
        normalised = (images * 255 - torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1)) / 256
        assert torch.allclose(encoder.trunk(encoder.normalise(images)), network.features(normalised), atol=1e-5)


def test_encoder_stage_and_weights_path(tmp_path):
    copy = tmp_path / "other.dat"
    copy.write_bytes(face_resnet_path().read_bytes())
    encoder = build_encoder("dlib_resnet", LAYOUT, weights_path=copy)
    assert "other.dat" in encoder.init_description and encoder.pretrained
    shallow = DlibResNetEncoder(LAYOUT, stage=3, weights_path=copy)
    assert shallow.code_head.others.in_features == 128 * 4
    with torch.no_grad():
        assert torch.equal(shallow(torch.rand(1, 3, 128, 128)), torch.zeros(1, LAYOUT.size))
    (tmp_path / "bad.dat").write_bytes(copy.read_bytes()[:5000])
    with pytest.raises(MofaError, match="bad.dat"):
        build_encoder("dlib_resnet", LAYOUT, weights_path=tmp_path / "bad.dat")


def test_standardised_features_are_calibrated_once_and_keep_the_zero_code():
    encoder = build_encoder("dlib_resnet", LAYOUT, options={"standardise": True})
    images = torch.rand(6, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    encoder.calibrate(images)
    with torch.no_grad():
        features = encoder.embed(encoder.normalise(images))
        torch.testing.assert_close(features.mean(0), torch.zeros(features.shape[1]), atol=1e-4, rtol=0)
        assert torch.allclose(features.std(0)[features.std(0) > 0.5], torch.tensor(1.0), atol=1e-3)
        assert torch.equal(encoder(images), torch.zeros(6, LAYOUT.size))  # the head is still zero
    state = {k: v.clone() for k, v in encoder.state_dict().items()}
    encoder.calibrate(torch.rand(6, 3, 112, 112))  # once only: a run started from trained weights keeps them
    assert all(torch.equal(state[k], v) for k, v in encoder.state_dict().items())
    fresh = build_encoder("dlib_resnet", LAYOUT, options={"standardise": True})
    fresh.load_state_dict(state)  # the statistics travel with the weights
    assert bool(fresh.calibrated) and torch.equal(fresh.feature_mean, encoder.feature_mean)
    with pytest.raises(MofaError, match="encoders.dlib_resnet.options"):
        build_encoder("dlib_resnet", LAYOUT, options={"no_such_option": 1})


def test_centre_crop_keeps_the_middle_of_the_input():
    encoder = build_encoder("dlib_resnet", LAYOUT, options={"centre_crop": 0.8})
    images = torch.rand(2, 3, 150, 150, generator=torch.Generator().manual_seed(2))
    plain = build_encoder("dlib_resnet", LAYOUT)
    torch.testing.assert_close(encoder.normalise(images), plain.normalise(images[..., 15:135, 15:135]))
    with torch.no_grad():
        assert torch.equal(encoder(images), torch.zeros(2, LAYOUT.size))
    with pytest.raises(MofaError, match="centre_crop"):
        build_encoder("dlib_resnet", LAYOUT, options={"centre_crop": 1.5})
