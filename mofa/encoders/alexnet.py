"""AlexNet encoder with torchvision's layer names, so `alexnet-owt-7be5be79.pth` loads unchanged.

Layers as torchvision's `alexnet` (the "one weird trick" variant): features.0/3/6/8/10 convolutions
64@11x11 stride 4 pad 2, 192@5x5 pad 2, 384/256/256@3x3 pad 1, each followed by ReLU, max-pooling 3x3
stride 2 after the 1st, 2nd and 5th; adaptive average pooling to 6x6; classifier Dropout, Linear 9216->4096,
ReLU, Dropout, Linear 4096->4096, ReLU, and at classifier.6 the zero-initialised `CodeHead` in place of
the 1000-class layer.

Input: [0, 1] RGB, normalised inside with the ImageNet mean and std of torchvision's weights. Any size
from 63x63 works (the adaptive pooling absorbs the rest); MoFA uses 240x240 crops.
Random init: PyTorch's default layer init (kaiming-uniform), which is what torchvision's AlexNet uses.
"""
from __future__ import annotations

import torch
from torch import nn

from mofa.decoder.layout import CodeLayout
from mofa.encoders.head import IMAGENET_MEAN, IMAGENET_STD, CodeHead, Encoder


class AlexNetEncoder(Encoder):
    pixel_mean = IMAGENET_MEAN
    pixel_std = IMAGENET_STD
    min_input_size = 63
    head_prefix = "classifier.6"

    def __init__(self, layout: CodeLayout, rotation_bound_rad: float | None = None, dropout: float = 0.5):
        super().__init__(layout)
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
            CodeHead(4096, layout, rotation_bound_rad),
        )

    def embed(self, normalised: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(normalised)), 1)
        return self.classifier[:6](x)
