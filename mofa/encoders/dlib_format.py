"""A reader of dlib's DNN serialization format (`dlib::serialize(net, file)`), no pickle and no dlib.

Written from the format as dlib's sources define it (serialize.h, float_details.h, dnn/core.h,
dnn/layers.h, dnn/input.h, dnn/loss.h, cuda/tensor.h):

- integer: a control byte (low 4 bits: byte count 1..8, bit 0x80: negative, bits 0x70: always 0), then
  the magnitude little-endian in that many bytes. bool: ASCII '1' or '0'. string: length, then bytes.
- float/double: int64 mantissa then int16 exponent (two integers as above), value mantissa * 2**exponent;
  exponent 32000 / 32001 / 32002 = +inf / -inf / NaN.
- tensor (resizable_tensor): version 2, n, k, nr, nc, then n*k*nr*nc little-endian float32.
  alias_tensor (a view's shape, no data): version 1, n, k, nr, nc.
- a network nests wrappers, each writing its version and then its whole sub-network before its own
  payload, so the file holds all version headers (outside in) and then all payloads (input upwards):
  add_loss_layer (version 1, then the loss details *before* its sub-network), add_layer (version 1-2;
  after its details: 2-3 bools, x_grad, cached_output, params_grad from version 2), the innermost
  add_layer over the input layer (version 1-3: the input, details, 3 bools, x_grad, cached_output,
  grad_final from 2, sample_expansion_factor from 3), add_tag_layer and add_skip_layer (version 1 and
  their sub-network, nothing else: no tag id, so the file cannot tell a tag from a skip).

`read_dlib_network` returns the layers as `LayerRecord`s in input-to-output order; building a PyTorch
module from them is `mofa.encoders.dlib_resnet.build_dlib_resnet`.
"""
from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mofa.errors import MofaError

FACE_RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"

INPUT_TAGS = ("input_rgb_image_sized", "input_rgb_image")
_FLOAT_SPECIAL = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
_CONV_MODE = 0  # dlib's layer_mode: CONV_MODE = 0 (per channel), FC_MODE = 1 (per element)


def face_resnet_path() -> Path:
    """The installed `dlib_face_recognition_resnet_model_v1.dat` (PyPI package face_recognition_models).

    Found without importing the package: its __init__ imports pkg_resources, which recent setuptools
    no longer ships."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MofaError("the dlib face-recognition weights come from the package face_recognition_models: "
                        "pip install face_recognition_models==0.3.0 (or pip install -e .)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / FACE_RESNET_FILE
    if not path.is_file():
        raise MofaError(f"{path} not found: reinstall face_recognition_models==0.3.0")
    return path


@dataclass
class LayerRecord:
    """One layer of a dlib network. `kind`: input, con, affine, relu, max_pool, avg_pool, add_prev,
    tag_or_skip, fc or loss; `tag`: the version string dlib wrote ("con_4", ...; "" for tag_or_skip);
    `offset`: byte offset of the record in the file; `params`: numpy arrays and numbers, per kind:

    - input: mean_rgb (3,) float64 in 0..255 units, size (rows, cols) or None
    - con: weight (out, in, kh, kw) float32, bias (out,) or None, stride (y, x), padding (y, x)
    - affine: gamma (C,), beta (C,) float32 (output = gamma * x + beta per channel)
    - max_pool / avg_pool: size (rows, cols) (0 = the whole input), stride (y, x), padding (y, x)
    - fc: weight (in, out) float32 as stored (output = x @ weight), bias (out,) or None
    - loss: margin, distance_threshold (loss_metric_)
    """
    kind: str
    tag: str
    offset: int
    params: dict[str, Any] = field(default_factory=dict)


class _Truncated(MofaError):
    """The file ends inside a value."""


class DlibReader:
    """A cursor over the bytes of a dlib file (`path` only names it in errors): each read returns one
    dlib value and moves on; errors are one-line MofaErrors naming the file, the record (`context`)
    and the byte offset."""

    def __init__(self, data: bytes, path: str | Path = "<bytes>"):
        self.data, self.path, self.pos = data, path, 0
        self.context = "the network header"

    def fail(self, problem: str, offset: int | None = None) -> MofaError:
        at = self.pos if offset is None else offset
        return MofaError(f"{self.path}: {problem} in {self.context} at byte {at}: not a dlib network this "
                         f"reader knows, or a damaged file")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise _Truncated(f"{self.path}: truncated: {self.context} needs {n} bytes at byte {self.pos}, but the "
                             f"file ends at byte {len(self.data)} (an incomplete download?)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def integer(self) -> int:
        """A signed integer of 1..8 magnitude bytes."""
        start = self.pos
        control = self.take(1)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            raise self.fail(f"bad integer control byte 0x{control:02x}", start)
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def count(self) -> int:
        """A non-negative integer (size_t, unsigned long, a version)."""
        start, value = self.pos, self.integer()
        if value < 0:
            raise self.fail(f"negative size {value}", start)
        return value

    def boolean(self) -> bool:
        """A bool: ASCII '1' or '0'."""
        start, byte = self.pos, self.take(1)
        if byte not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {byte!r}", start)
        return byte == b"1"

    def string(self) -> str:
        """A string: its length, then that many (printable ASCII) bytes."""
        start, n = self.pos, self.count()
        raw = self.take(n)
        if not all(32 <= b < 127 for b in raw):
            raise self.fail("bad string (not printable ASCII)", start)
        return raw.decode("ascii")

    def peek_string(self) -> str | None:
        """The string at the cursor if one is there, else None; the cursor does not move."""
        start, context = self.pos, self.context
        try:
            return self.string()
        except _Truncated:
            raise
        except MofaError:
            return None
        finally:
            self.pos, self.context = start, context

    def real(self) -> float:
        """A float or double: mantissa * 2**exponent (two integers), or inf, -inf, NaN."""
        start = self.pos
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail("a float in dlib's old text format (not supported)", start)
        mantissa, exponent = self.integer(), self.integer()
        if exponent in _FLOAT_SPECIAL:
            return _FLOAT_SPECIAL[exponent]
        return math.ldexp(mantissa, exponent)

    def version(self, expected: tuple[int, ...], what: str) -> int:
        """An integer version number, one of `expected`."""
        start, value = self.pos, self.integer()
        if value not in expected:
            raise self.fail(f"unexpected {what} version {value}", start)
        return value

    def tensor(self) -> np.ndarray:
        """A resizable_tensor as float32 (n, k, nr, nc)."""
        self.version((2,), "tensor")
        shape = tuple(self.count() for _ in range(4))
        raw = self.take(4 * math.prod(shape))
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        """An alias_tensor's shape (n, k, nr, nc)."""
        self.version((1,), "alias_tensor")
        return tuple(self.count() for _ in range(4))  # type: ignore[return-value]


# -- layer details, keyed by the version string dlib writes first ----------------------------------

def _split(s: DlibReader, params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray | None]:
    """Cut a layer's flat parameter tensor into consecutive views of `shapes` (empty -> None)."""
    flat, out, at = params.reshape(-1), [], 0
    for shape in shapes:
        n = math.prod(shape)
        out.append(flat[at:at + n].reshape(shape) if n else None)
        at += n
    if at != flat.size:
        raise s.fail(f"parameter tensor holds {flat.size} values, its parts {shapes} need {at}")
    return out


def _con(s: DlibReader, tag: str) -> dict:
    params = s.tensor()
    num_filters, nr, nc = s.count(), s.count(), s.count()
    stride, padding = (s.count(), s.count()), (s.count(), s.count())
    filters, biases = s.alias(), s.alias()
    for _ in range(4):  # learning-rate and weight-decay multipliers
        s.real()
    if tag in ("con_5", "con_6") and not s.boolean():
        biases = (0, 0, 0, 0)  # use_bias = false
    if tag == "con_6" and s.boolean():
        raise s.fail("a convolution with a fused ReLU (not supported)")
    if filters[0] != num_filters or filters[2:] != (nr, nc):
        raise s.fail(f"filters {filters} do not match {num_filters} filters of {nr}x{nc}")
    weight, bias = _split(s, params, filters, (math.prod(biases),))
    return {"weight": weight, "bias": bias, "stride": stride, "padding": padding}


def _affine(s: DlibReader, tag: str) -> dict:
    params = s.tensor()
    gamma_shape, beta_shape = s.alias(), s.alias()
    mode = s.integer()
    if tag == "affine_2" and s.boolean():
        raise s.fail("a disabled affine layer (not supported)")
    if mode != _CONV_MODE:
        raise s.fail(f"an affine layer in mode {mode} (only per-channel, mode {_CONV_MODE}, is supported)")
    gamma, beta = _split(s, params, gamma_shape, beta_shape)
    return {"gamma": gamma.reshape(-1), "beta": beta.reshape(-1)}


def _bn_con(s: DlibReader, tag: str) -> dict:
    """Batch norm (inference): folded into affine, gamma / sqrt(var + eps), beta - mean * that."""
    params = s.tensor()
    gamma_shape, beta_shape = s.alias(), s.alias()
    s.tensor(), s.tensor()  # the last batch's means and inverse stds (training only)
    running_means, running_variances = s.tensor().reshape(-1), s.tensor().reshape(-1)
    s.count(), s.count()  # num_updates, running_stats_window_size
    for _ in range(4):
        s.real()
    eps = s.real()
    gamma, beta = _split(s, params, gamma_shape, beta_shape)
    scale = gamma.reshape(-1) / np.sqrt(running_variances + eps)
    return {"gamma": scale.astype(np.float32), "beta": (beta.reshape(-1) - running_means * scale).astype(np.float32)}


def _pool(s: DlibReader, tag: str) -> dict:
    size = (s.count(), s.count())
    stride, padding = (s.count(), s.count()), (s.count(), s.count())
    return {"size": size, "stride": stride, "padding": padding}


def _fc(s: DlibReader, tag: str) -> dict:
    num_outputs, num_inputs = s.count(), s.count()
    params = s.tensor()
    weights, biases = s.alias(), s.alias()
    bias_mode = s.integer()  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
    for _ in range(4):
        s.real()
    if tag == "fc_3" and not s.boolean():
        biases = (0, 0, 0, 0)
    if weights[:2] != (num_inputs, num_outputs):
        raise s.fail(f"weights {weights} do not match {num_inputs} inputs x {num_outputs} outputs")
    if bias_mode == 1:
        biases = (0, 0, 0, 0)
    weight, bias = _split(s, params, weights[:2], (math.prod(biases),))
    return {"weight": weight, "bias": bias}


def _no_params(s: DlibReader, tag: str) -> dict:
    return {}


def _input(s: DlibReader, tag: str) -> dict:
    mean = np.array([s.real(), s.real(), s.real()])
    size = (s.count(), s.count()) if tag == "input_rgb_image_sized" else None
    return {"mean_rgb": mean, "size": size}


def _loss_metric(s: DlibReader, tag: str) -> dict:
    if tag == "loss_metric_":  # before version 2, these were fixed
        return {"margin": 0.04, "distance_threshold": 0.6}
    return {"margin": s.real(), "distance_threshold": s.real()}


_LAYERS: dict[str, tuple[str, Callable[[DlibReader, str], dict]]] = {
    "con_4": ("con", _con), "con_5": ("con", _con), "con_6": ("con", _con),
    "affine_": ("affine", _affine), "affine_2": ("affine", _affine), "bn_con2": ("affine", _bn_con),
    "relu_": ("relu", _no_params), "add_prev_": ("add_prev", _no_params),
    "max_pool_2": ("max_pool", _pool), "avg_pool_2": ("avg_pool", _pool),
    "fc_2": ("fc", _fc), "fc_3": ("fc", _fc),
}
_INPUTS = {tag: ("input", _input) for tag in INPUT_TAGS}
_LOSSES = {"loss_metric_": ("loss", _loss_metric), "loss_metric_2": ("loss", _loss_metric)}


def _record(s: DlibReader, known: dict[str, tuple[str, Callable[[DlibReader, str], dict]]], what: str) -> LayerRecord:
    start = s.pos
    s.context = f"a {what} record"
    tag = s.string()
    if tag not in known:
        raise s.fail(f"unknown {what} tag {tag!r} (known: {', '.join(known)})", start)
    s.context = f"the {tag!r} record that starts at byte {start}"
    kind, parse = known[tag]
    return LayerRecord(kind, tag, start, parse(s, tag))


def _add_layer_trailer(s: DlibReader, tensors: int) -> None:
    """What add_layer writes after its details: 2-3 bools (version-dependent), then `tensors` tensors."""
    flags = 0
    while flags < 3 and s.pos < len(s.data) and s.data[s.pos] in b"01":
        s.boolean()
        flags += 1
    if flags < 2:
        s.boolean()  # fails with the file, record and offset
    for _ in range(tensors):
        s.tensor()


def read_dlib_network(path: str | Path) -> list[LayerRecord]:
    """The layers of the dlib network in file `path`, input first, loss last.

    Tag and skip wrappers become `tag_or_skip` records in their places. MofaError (one line, naming the
    file, the record and the byte offset) on an unknown tag, a truncated file or trailing bytes."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MofaError(f"{path}: cannot read the dlib network file ({error.strerror})") from None
    s = DlibReader(data, path)
    s.version((1,), "add_loss_layer")
    loss = _record(s, _LOSSES, "loss layer")

    s.context = "the network's version headers"
    headers: list[tuple[int, int]] = []  # (offset, version), outermost first
    while s.peek_string() not in INPUT_TAGS:
        headers.append((s.pos, s.version((1, 2, 3), "layer wrapper")))
    if not headers:
        raise s.fail("an input layer with no layer above it")
    input_record = _record(s, _INPUTS, "input layer")

    (_, input_version), rest = headers[-1], headers[-2::-1]  # innermost first
    if rest and not any(version == 2 for _, version in rest):
        raise s.fail("only version-1 headers (an old dlib's file), so layers cannot be told from tags")
    records = [input_record, _record(s, _LAYERS, "layer")]
    _add_layer_trailer(s, 2 + (input_version >= 2))
    if input_version >= 3:
        s.count()  # sample_expansion_factor
    for offset, version in rest:
        if version == 3:
            raise s.fail("a version-3 header above the first layer (only the input's wrapper has one)", offset)
        if version == 1:  # add_tag_layer / add_skip_layer: no payload
            records.append(LayerRecord("tag_or_skip", "", offset))
            continue
        records.append(_record(s, _LAYERS, "layer"))
        _add_layer_trailer(s, 3)
    if s.pos != len(data):
        raise MofaError(f"{path}: {len(data) - s.pos} bytes left over after the last layer, at byte {s.pos}: "
                        f"not a single dlib network, or a damaged file")
    return records + [loss]
