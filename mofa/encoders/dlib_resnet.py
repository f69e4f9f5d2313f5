"""dlib's face-recognition ResNet (the 128-D face descriptor of `dnn_face_recognition_ex`) in PyTorch, and
an encoder on its trunk.

The network (29 convolutions, 5.6 M parameters): input 150x150 RGB, normalised (RGB - mean) / 256 with
the mean stored in the file ((122.782, 117.001, 104.298) in 0..255); con 32 7x7 stride 2, affine, ReLU,
max-pool 3x3 stride 2; five levels of residual blocks (dlib's alevel4 .. alevel0): 3x ares<32>,
ares_down<64> + 3x ares<64>, ares_down<128> + 2x ares<128>, ares_down<256> + 2x ares<256>,
ares_down<256>; global average pool; fc 256 -> 128 without bias. A block is con 3x3 (stride s) ->
affine -> ReLU -> con 3x3 (stride 1, pad 1) -> affine; ares = relu(block(x) + x), ares_down =
relu(block_stride2(x) + avg_pool_2x2_stride2(x)). dlib's add_prev zero-pads the smaller operand
(channels and, top-left aligned, rows and columns): at 150 px the last-but-one level's strided
convolution gives 3x3 where the pooled shortcut is 4x4. Spatial sizes: 150 -> 72 -> 35 (level 1) -> 17
-> 8 -> 4 -> 2. The affine layers are batch norms folded at training time (gamma | beta per channel);
here they stay per-channel scale + shift modules, trainable.

Weights: `dlib_face_recognition_resnet_model_v1.dat` (Davis King, CC0 public domain), from the PyPI
package face_recognition_models, read by `mofa.encoders.dlib_format` (no pickle, no dlib).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mofa.decoder.layout import CodeLayout
from mofa.encoders.dlib_format import LayerRecord, face_resnet_path, read_dlib_network
from mofa.encoders.head import CodeHead, Encoder
from mofa.errors import MofaError

DLIB_MEAN_255 = (122.782, 117.001, 104.298)  # R, G, B in 0..255 (the file's input layer)
DLIB_SCALE_255 = 256.0  # (RGB - mean) / 256
# (output channels, downsamples) of each residual block, input first, as dnn_face_recognition_ex.
FACE_RESNET_BLOCKS = ((32, False),) * 3 + ((64, True),) + ((64, False),) * 3 + ((128, True),) + \
    ((128, False),) * 2 + ((256, True),) + ((256, False),) * 2 + ((256, True),)
LEVELS = 5
WEIGHTS_DESCRIPTION = ("dlib face-recognition ResNet v1 (dlib_face_recognition_resnet_model_v1.dat, "
                       "face_recognition_models, CC0 public domain)")


class ChannelAffine(nn.Module):
    """(B, C, H, W) -> weight[c] * x + bias[c]: dlib's affine layer (a batch norm folded at training)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: (B, C1, H1, W1) + (B, C2, H2, W2) -> (B, max C, max H, max W), each operand
    zero-padded at the end of channels, rows and columns (aligned at channel 0, the top-left pixel)."""
    shape = [max(p, q) for p, q in zip(a.shape[1:], b.shape[1:])]

    def pad(x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape[1:]
        return x if [c, h, w] == shape else F.pad(x, (0, shape[2] - w, 0, shape[1] - h, 0, shape[0] - c))
    return pad(a) + pad(b)


class Residual(nn.Module):
    """relu(branch(x) + shortcut(x)), zero-padded as dlib's add_prev; shortcut identity (ares) or
    average-pool 2x2 stride 2 (ares_down)."""

    def __init__(self, branch: nn.Sequential, shortcut: nn.Module):
        super().__init__()
        self.branch, self.shortcut = branch, shortcut

    @property
    def out_channels(self) -> int:
        return self.branch[3].out_channels

    @property
    def downsamples(self) -> bool:
        return not isinstance(self.shortcut, nn.Identity)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(add_zero_padded(self.branch(x), self.shortcut(x)))


class DlibResNet(nn.Module):
    """dlib's face-recognition network: images (B, 3, H, W) RGB in [0, 1] -> (B, 128) descriptors (dlib's
    `compute_face_descriptor` on 150x150 aligned chips). `stem` (conv, affine, ReLU, max-pool), `levels`
    (5 `nn.Sequential`s of `Residual`s), `fc` (256 -> 128, no bias)."""

    def __init__(self, mean_rgb_255: torch.Tensor, stem: nn.Sequential, levels: list[nn.Sequential], fc: nn.Linear):
        super().__init__()
        self.register_buffer("mean", mean_rgb_255.float().view(1, 3, 1, 1) / 255.0, persistent=False)
        self.stem, self.levels, self.fc = stem, nn.ModuleList(levels), fc

    def features(self, normalised: torch.Tensor, stage: int = LEVELS) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> the map after the first `stage` levels (B, C, h, w);
        (B, 256, 2, 2) at 150 px and stage 5."""
        x = self.stem(normalised)
        for level in self.levels[:stage]:
            x = level(x)
        return x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images - self.mean) * (255.0 / DLIB_SCALE_255)
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _conv(record: LayerRecord) -> nn.Conv2d:
    p = record.params
    weight, bias = torch.from_numpy(p["weight"]), p["bias"]
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), stride=p["stride"],
                     padding=p["padding"], bias=bias is not None)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(torch.from_numpy(bias))
    return conv


def _affine(record: LayerRecord) -> ChannelAffine:
    return ChannelAffine(torch.from_numpy(record.params["gamma"]), torch.from_numpy(record.params["beta"]))


def _pool(record: LayerRecord, cls: type[nn.Module]) -> nn.Module:
    p = record.params
    if p["padding"] != (0, 0):  # dlib's padded pooling semantics are not checked here
        raise MofaError(f"dlib {record.tag} at byte {record.offset}: padded pooling is not supported")
    return cls(p["size"], stride=p["stride"])


# The record kinds of each part, input upwards (dlib wraps a block as tag1 ... add_prev1, and a
# downsampling block as tag1 ... tag2 skip1 avg_pool add_prev2).
_STEM = ("input", "con", "affine", "relu", "max_pool")
_BRANCH = ("con", "affine", "relu", "con", "affine")
_BLOCK = ("tag_or_skip",) + _BRANCH + ("add_prev", "relu")
_DOWN_BLOCK = ("tag_or_skip",) + _BRANCH + ("tag_or_skip", "tag_or_skip", "avg_pool", "add_prev", "relu")
_HEAD = ("avg_pool", "fc", "loss")


def build_dlib_resnet(records: list[LayerRecord], source: str | Path = "the dlib network") -> DlibResNet:
    """The PyTorch network of `read_dlib_network`'s records: a stem, residual blocks grouped into levels
    (a new level at each downsampling block), a global average pool and a bias-free fc. MofaError if
    the records are not laid out so, or if the blocks differ from `FACE_RESNET_BLOCKS`."""
    kinds = tuple(r.kind for r in records)

    def mismatch(at: int, expected: tuple[str, ...]) -> MofaError:
        got = " ".join(kinds[at:at + len(expected)])
        return MofaError(f"{source}: not dlib's face-recognition ResNet: at layer {at} (byte "
                         f"{records[min(at, len(records) - 1)].offset}) expected {' '.join(expected)}, got {got}")

    if kinds[:len(_STEM)] != _STEM:
        raise mismatch(0, _STEM)
    stem = nn.Sequential(_conv(records[1]), _affine(records[2]), nn.ReLU(), _pool(records[4], nn.MaxPool2d))
    at, blocks = len(_STEM), []
    while kinds[at:at + len(_HEAD)] != _HEAD:
        pattern = _DOWN_BLOCK if kinds[at:at + len(_DOWN_BLOCK)] == _DOWN_BLOCK else _BLOCK
        if kinds[at:at + len(pattern)] != pattern:
            raise mismatch(at, _BLOCK)
        r = records[at + 1:at + 6]
        branch = nn.Sequential(_conv(r[0]), _affine(r[1]), nn.ReLU(), _conv(r[3]), _affine(r[4]))
        shortcut = _pool(records[at + 8], nn.AvgPool2d) if pattern is _DOWN_BLOCK else nn.Identity()
        blocks.append(Residual(branch, shortcut))
        at += len(pattern)
    pool, fc_record = records[at], records[at + 1]
    if pool.params["size"] != (0, 0) or fc_record.params["bias"] is not None:
        raise MofaError(f"{source}: expected a global average pool and an fc without bias at the top")
    layout = tuple((b.out_channels, b.downsamples) for b in blocks)
    if layout != FACE_RESNET_BLOCKS:
        raise MofaError(f"{source}: residual blocks (channels, downsampling) {layout} differ from dlib's "
                        f"face-recognition ResNet {FACE_RESNET_BLOCKS}")
    levels, current = [], []
    for block in blocks:
        if block.downsamples and current:
            levels.append(nn.Sequential(*current))
            current = []
        current.append(block)
    levels.append(nn.Sequential(*current))
    weight = torch.from_numpy(fc_record.params["weight"])  # (in, out)
    fc = nn.Linear(weight.shape[0], weight.shape[1], bias=False)
    with torch.no_grad():
        fc.weight.copy_(weight.T)
    return DlibResNet(torch.from_numpy(records[0].params["mean_rgb"]), stem, levels, fc)


def load_dlib_face_resnet(path: str | Path | None = None) -> DlibResNet:
    """dlib's face-recognition network from `path` (default: the installed face_recognition_models copy),
    in eval mode."""
    path = face_resnet_path() if path is None else Path(path)
    network = build_dlib_resnet(read_dlib_network(path), path)
    mean = network.mean.view(-1) * 255.0
    if not torch.allclose(mean, torch.tensor(DLIB_MEAN_255), atol=1e-3):
        raise MofaError(f"{path}: input mean {mean.tolist()} differs from dlib's face-recognition "
                        f"{list(DLIB_MEAN_255)}, which DlibResNetEncoder normalises with")
    return network.eval()


def _out(size: int, layer: nn.Module) -> int:
    """Output side length of a convolution or pooling layer for input side `size`; 0 where the input
    (padded) is smaller than the kernel, or is 0 itself."""
    kernel, stride, padding = (v if isinstance(v, int) else v[0]
                               for v in (layer.kernel_size, layer.stride, layer.padding))
    return (size + 2 * padding - kernel) // stride + 1 if size > 0 and size + 2 * padding >= kernel else 0


def spatial_sizes(network: DlibResNet, size: int, stage: int = LEVELS) -> list[int]:
    """Map side lengths for a size x size input: [input, stem conv, stem pool, level 1, ..., level
    `stage`]: [150, 72, 35, 35, 17, 8, 4, 2] at 150 px; 0 from the first layer whose input is smaller
    than its kernel."""
    sizes = [size, _out(size, network.stem[0])]
    sizes.append(_out(sizes[-1], network.stem[3]))
    for level in network.levels[:stage]:
        s = sizes[-1]
        for block in level:
            through = _out(_out(s, block.branch[0]), block.branch[3])
            shortcut = _out(s, block.shortcut) if block.downsamples else s
            s = max(through, shortcut) if through and shortcut else 0
        sizes.append(s)
    return sizes


class DlibResNetEncoder(Encoder):
    """images (B, 3, H, W) RGB in [0, 1] -> code: dlib's face-recognition trunk up to level `stage`
    (1..5; 5 = the 256-channel map before the global pool, 2x2 at 150 px), average-pooled to
    `pool_grid` x `pool_grid`, flattened (C * pool_grid**2 features), then the zero-initialised CodeHead.
    Fully convolutional: any input from `min_input_size` (103 px at stage 5) works.

    Pre-trained by construction: the trunk is read from `weights_path`, a dlib .dat network file
    (default: dlib_face_recognition_resnet_model_v1.dat from face_recognition_models)."""

    pixel_mean = tuple(m / 255.0 for m in DLIB_MEAN_255)
    pixel_std = (DLIB_SCALE_255 / 255.0,) * 3
    head_prefix = "head"
    loads_own_weights = True  # build_encoder passes weights_path to the constructor (a .dat, not a state dict)

    def __init__(self, layout: CodeLayout, rotation_bound_rad: float | None = None, stage: int = LEVELS,
                 weights_path: str | Path | None = None, pool_grid: int = 2, standardise: bool = False,
                 centre_crop: float = 1.0):
        super().__init__(layout)
        if not 1 <= stage <= LEVELS:
            raise MofaError(f"dlib_resnet stage must be 1..{LEVELS} (residual levels kept), got {stage}")
        path = face_resnet_path() if weights_path is None else Path(weights_path)
        network = load_dlib_face_resnet(path)
        if not 0 < centre_crop <= 1:
            raise MofaError(f"dlib_resnet centre_crop must be in (0, 1] (the share of the input's side kept), got {centre_crop}")
        self.stage, self.pool_grid, self.centre_crop = stage, pool_grid, float(centre_crop)
        self.trunk = nn.Sequential(network.stem, *network.levels[:stage])
        self.min_input_size = next(s for s in range(1, 1024) if spatial_sizes(network, s, stage)[-1] > 0)
        self.pool = nn.AdaptiveAvgPool2d(pool_grid)
        channels = self.trunk[-1][-1].out_channels
        features = channels * pool_grid ** 2
        # With `standardise`, the head sees each feature centred and scaled by its mean and deviation over
        # the first training images (`calibrate`): the same trunk features vary little from face to face
        # next to their common part, so without it the head's gradient is mostly the batch's mean.
        self.standardise = standardise
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_std", torch.ones(features))
        self.register_buffer("calibrated", torch.tensor(not standardise))
        self.head = CodeHead(features, layout, rotation_bound_rad)
        self.pretrained = True
        self.init_description = WEIGHTS_DESCRIPTION if weights_path is None else f"dlib ResNet weights from {path.name}"
        self.init_description += (f"; trunk to residual level {stage} of {LEVELS}, pooled to {pool_grid}x"
                                  f"{pool_grid}{', standardised' if standardise else ''}, zero-initialised code regressor")

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, S, S) in [0, 1] -> the centre `centre_crop` of each side (dlib's face chips frame
        the face tighter than this project's crops), in dlib's normalisation."""
        if self.centre_crop < 1:
            side = images.shape[-1]
            keep = max(1, round(self.centre_crop * side))
            start = (side - keep) // 2
            images = images[..., start:start + keep, start:start + keep]
        return super().normalise(images)

    def trunk_features(self, normalised: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W) -> pooled, flattened trunk features (B, F)."""
        return torch.flatten(self.pool(self.trunk(normalised)), 1)

    def embed(self, normalised: torch.Tensor) -> torch.Tensor:
        return (self.trunk_features(normalised) - self.feature_mean) / self.feature_std

    @property
    def needs_calibration(self) -> bool:
        return not bool(self.calibrated)

    @torch.no_grad()
    def calibrate(self, images: torch.Tensor) -> None:
        """Once, before training: the standardisation's mean and deviation (B >= 2 images (B, 3, H, W) in
        [0, 1], at the training input size) from the pre-trained trunk. The head is zero, so the code
        does not change."""
        if not self.needs_calibration:
            return
        was_training = self.training
        self.eval()
        features = torch.cat([self.trunk_features(self.normalise(images[i:i + 32])) for i in range(0, len(images), 32)])
        self.train(was_training)
        self.feature_mean.copy_(features.mean(0))
        self.feature_std.copy_(features.std(0).clamp_min(1e-3 * float(features.std(0).mean())))
        self.calibrated.fill_(True)
