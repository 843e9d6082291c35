"""The CIFAR ResNet of He et al. (2016), the compression benchmark model of PIC-PQ (METHODS.md section 3).

Three stages of `n` basic blocks (two 3x3 convs with batch norm) at widths
16/32/64 and strides 1/2/2, depth = 6n + 2 (ResNet-20: n = 3, ResNet-56: n = 9),
global average pooling and one linear classifier. Shortcuts are identities;
where the width doubles the input is subsampled by 2 and zero-padded in
channels ("option A"), so there are no 1x1 shortcut convs: ResNet-56 has
125,485,056 conv MACs on a 32 x 32 input.

The zero padding follows the actual channel counts at run time, so a block
whose inner channels were pruned keeps working.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1:
            shortcut = shortcut[:, :, ::self.stride, ::self.stride]
        extra = out.shape[1] - shortcut.shape[1]
        if extra:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, extra // 2, extra - extra // 2))
        return F.relu(out + shortcut)


@register("resnet_cifar")
class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2) with option-A shortcuts; input (B, bands, H, W), output class logits."""

    def __init__(self, depth: int = 20, num_classes: int = 10, bands: int = 3, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, ...), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(bands, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.layer = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, num_classes)
        self.blocks_per_stage = n
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)

    def stage_of(self, layer_name: str) -> int:
        """0 for the first conv and the classifier, else the stage (1..3) a conv belongs to."""
        if not layer_name.startswith("layer."):
            return 0
        block = int(layer_name.split(".")[1])
        return 1 + block // self.blocks_per_stage
