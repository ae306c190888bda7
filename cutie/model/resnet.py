"""ResNet pieces (torchvision's residual blocks) for the pixel and mask encoders, up to layer3 (stride 16).

Parameter names follow torchvision's ResNet (conv1, bn1, layerN.i.convK/bnK, downsample.0/1), so ImageNet
weights load by name; the encoders choose the stage attribute names the official checkpoint uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
    return _bn_relu_pool(conv1(x), bn1)


def object_stem_forward(
    image: torch.Tensor, planes: torch.Tensor, conv1: nn.Conv2d, bn1: nn.BatchNorm2d
) -> torch.Tensor:
    """stem_forward of each object's [image, planes] channels without redoing the image's share per object.

    A convolution is linear in its input channels, so conv(cat(image, planes)) = conv_image(image) +
    conv_planes(planes): the image part is convolved once per frame and added to every object's (the official
    code repeats the image for each object; same weights, same sum up to float rounding).
    image: B*Ci*H*W, planes: B*O*Cp*H*W with Ci + Cp = conv1.in_channels -> (B*O)*64*H/4*W/4.
    """
    b, o = planes.shape[:2]
    ci = image.shape[1]
    weight = conv1.weight  # 64*(Ci+Cp)*7*7
    x = F.conv2d(image, weight[:, :ci], None, conv1.stride, conv1.padding)  # B*64*H/2*W/2
    g = F.conv2d(planes.flatten(0, 1), weight[:, ci:], None, conv1.stride, conv1.padding)  # (B*O)*64*H/2*W/2
    return _bn_relu_pool((g.view(b, o, *g.shape[1:]) + x.unsqueeze(1)).flatten(0, 1), bn1)


def _bn_relu_pool(x: torch.Tensor, bn1: nn.BatchNorm2d) -> torch.Tensor:
    x = torch.relu_(bn1(x))  # in place: BN backward needs its input, not its output
    if x.device.type == "cpu":
        return _ChannelsLastMaxPool.apply(x)
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class _ChannelsLastMaxPool(torch.autograd.Function):
    """The stem's 3x3 stride-2 max-pool, pooled in channels-last layout (CPU).

    PyTorch's NCHW max-pool kernel on the CPU is scalar (16 ms for 6*64*96*96 on the 2-core machine); the
    channels-last one is vectorised over channels, so pooling there, layout copies included, takes half the
    time. Same values, same argmax indices (flat positions within each plane), so the same gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y, idx = F.max_pool2d(
            x.contiguous(memory_format=torch.channels_last), 3, stride=2, padding=1, return_indices=True
        )
        idx = idx.contiguous()
        ctx.save_for_backward(x, idx)
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x, idx = ctx.saved_tensors
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(), x, [3, 3], [2, 2], [1, 1], [1, 1], False, idx
        )


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
