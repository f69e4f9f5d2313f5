"""VGG-16 (configuration D, no batch norm) encoder with torchvision's layer names, for VGG-Face weights.

Layers as torchvision's `vgg16`: 13 3x3 convolutions (pad 1) with ReLU at features.0, 2, 5, 7, 10, 12, 14,
17, 19, 21, 24, 26, 28 and 2x2 max-pooling after each block; adaptive average pooling to 7x7; classifier
Linear 25088->4096, ReLU, Dropout, Linear 4096->4096, ReLU, Dropout, and at classifier.6 the
zero-initialised `CodeHead` in place of VGG-Face's 2622-identity layer.

VGG-Face weights (Parkhi et al. 2015) are published for MatConvNet, Caffe and Torch with layer names
conv1_1 .. conv5_3, fc6, fc7, fc8; the common PyTorch port (Albanie's `vgg_face_dag.pth`, converted from
the MatConvNet model) keeps those names. They map in order onto torchvision's indices:
conv1_1 -> features.0, conv1_2 -> features.2, conv2_1 -> features.5, ..., conv5_3 -> features.28,
fc6 -> classifier.0, fc7 -> classifier.3, fc8 -> classifier.6 (`convert_vgg_face_state_dict`; loading a
file with those names through `build_encoder("vgg_face", ...)` converts it automatically).

Input normalisation: the port takes RGB in 0..255 minus the mean face colour
(129.186279296875, 104.76238250732422, 93.59396362304688) (R, G, B) with std 1: the `meta` of
`Vgg_face_dag` in Albanie's port (robots.ox.ac.uk/~albanie/models/pytorch-mcn/vgg_face_dag.py), which
public code copies, e.g. github.com/claudio-unipv/vggface-pytorch `vggface.py` (which lists the same
values, in B, G, R order, as "93.5940, 104.7624, 129.1863"). Here, with images in [0, 1]:
(x - mean / 255) / (1 / 255). Caffe's model is BGR: converting from Caffe, flip conv1_1's input channels
(`flip_bgr=True`). Any input from 32x32 works; MoFA uses 240x240 crops (pool5 gives 7x7, as at 224).
Random init: torchvision's VGG init (convolutions kaiming-normal, fan-out, ReLU; linear N(0, 0.01);
biases zero).
"""
from __future__ import annotations

import torch
from torch import nn

from mofa.decoder.layout import CodeLayout
from mofa.encoders.head import CodeHead, Encoder

VGG_FACE_MEAN_255 = (129.186279296875, 104.76238250732422, 93.59396362304688)  # R, G, B in 0..255

# Configuration D: output channels per convolution, "M" = 2x2 max-pool.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

VGG_FACE_CONV_NAMES = ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                       "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3")


def _vgg_face_to_torchvision() -> dict[str, str]:
    """VGG-Face layer name -> torchvision module name, derived from the configuration."""
    mapping, conv, index = {}, 0, 0
    for item in VGG16_CONFIG:
        if item == "M":
            index += 1
        else:
            mapping[VGG_FACE_CONV_NAMES[conv]] = f"features.{index}"
            conv, index = conv + 1, index + 2  # conv + ReLU
    mapping.update({"fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6"})
    return mapping


VGG_FACE_TO_TORCHVISION = _vgg_face_to_torchvision()


def convert_vgg_face_state_dict(state: dict, flip_bgr: bool = False) -> dict:
    """Rename a VGG-Face state dict from port names (`conv1_1.weight`, ..., `fc8.bias`) to torchvision
    names (`features.0.weight`, ..., `classifier.6.bias`). An fc6 weight stored as a convolution
    (4096, 512, 7, 7), as Caffe-derived files do, becomes the (4096, 25088) linear weight (same C, H, W
    order as torchvision's flatten). `flip_bgr` reverses conv1_1's input channels (Caffe's BGR weights
    -> RGB). Keys that name no VGG-Face layer are kept unchanged, so the loader reports them."""
    out = {}
    for key, value in state.items():
        layer, _, param = key.partition(".")
        if layer not in VGG_FACE_TO_TORCHVISION:
            out[key] = value
            continue
        if layer == "fc6" and param == "weight" and value.ndim == 4:
            value = value.reshape(value.shape[0], -1)
        if layer == "conv1_1" and param == "weight" and flip_bgr:
            value = value.flip(1)
        out[f"{VGG_FACE_TO_TORCHVISION[layer]}.{param}"] = value
    return out


class VGGFaceEncoder(Encoder):
    pixel_mean = tuple(m / 255.0 for m in VGG_FACE_MEAN_255)
    pixel_std = (1.0 / 255.0,) * 3
    min_input_size = 32
    head_prefix = "classifier.6"

    def __init__(self, layout: CodeLayout, rotation_bound_rad: float | None = None, dropout: float = 0.5):
        super().__init__(layout)
        device = torch.get_default_device()
        with torch.device("meta"):  # skip PyTorch's default init: torchvision's VGG init replaces it below
            layers: list[nn.Module] = []
            channels = 3
            for item in VGG16_CONFIG:
                if item == "M":
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                else:
                    layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                    channels = item
            features = nn.Sequential(*layers)
            classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(p=dropout),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(p=dropout),
                CodeHead(4096, layout, rotation_bound_rad),
            )
        self.features = features.to_empty(device=device)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = classifier.to_empty(device=device)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)
        self.code_head.reset_parameters()

    @staticmethod
    def adapt_state_dict(state: dict) -> dict:
        """Files in VGG-Face port naming (`conv1_1.weight`, ...) are converted to torchvision names."""
        if any(key.partition(".")[0] in VGG_FACE_TO_TORCHVISION for key in state):
            return convert_vgg_face_state_dict(state)
        return state

    def embed(self, normalised: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(normalised)), 1)
        return self.classifier[:6](x)
