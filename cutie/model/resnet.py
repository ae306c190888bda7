"""ResNet pieces (torchvision's residual blocks) for the pixel and mask encoders, up to layer3 (stride 16).

Parameter names follow torchvision's ResNet (conv1, bn1, layerN.i.convK/bnK, downsample.0/1), so ImageNet
weights load by name; the encoders choose the stage attribute names the official checkpoint uses.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

_BLOCKS: dict[str, tuple[type[nn.Module], tuple[int, int, int]]] = {
    # block type and number of blocks in layer1..layer3
    "resnet18": (BasicBlock, (2, 2, 2)),
    "resnet50": (Bottleneck, (3, 4, 6)),
}


def stem(in_channels: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    """7x7 stride-2 convolution and its BatchNorm (ReLU and max-pool hold no weights)."""
    return nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64)


def stages(kind: str) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential]:
    """layer1 (stride 4), layer2 (stride 8), layer3 (stride 16) of a torchvision ResNet."""
    block, counts = _BLOCKS[kind]
    in_ch = 64
    out: list[nn.Sequential] = []
    for planes, count, stride in zip((64, 128, 256), counts, (1, 2, 2), strict=True):
        width = planes * block.expansion
        downsample = None
        if stride != 1 or in_ch != width:
            downsample = nn.Sequential(
                nn.Conv2d(in_ch, width, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )
        layers = [block(in_ch, planes, stride=stride, downsample=downsample)]
        layers += [block(width, planes) for _ in range(count - 1)]
        out.append(nn.Sequential(*layers))
        in_ch = width
    return out[0], out[1], out[2]


def stem_forward(x: torch.Tensor, conv1: nn.Conv2d, bn1: nn.BatchNorm2d) -> torch.Tensor:
    """conv-BN-ReLU-maxpool: stride 4, 64 channels."""
    x = torch.relu_(bn1(conv1(x)))  # in place: BN backward needs its input, not its output
    return nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class FrozenBatchNormMixin(nn.Module):
    """Keeps every BatchNorm of the module on its running statistics, also in training mode, as the
    official encoders do (their BN statistics stay those of the ImageNet weights; scale and shift still
    train)."""

    def train(self, mode: bool = True) -> FrozenBatchNormMixin:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(False)
        return self
