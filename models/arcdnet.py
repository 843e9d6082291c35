"""AR-CDNet: change detection with online uncertainty (METHODS.md section 1).

Two co-registered images go through one shared ResNet-18-D encoder; a
pyramid-pooling neck and feature-fusion modules (FFM) build a top-down
pyramid p2..p5 per date; temporal difference modules (3-D convolutions over
the two dates) give d2..d5; an online uncertainty branch (a texture stem on
the raw images, their temporal difference, fused with d2) gives the
uncertainty-aware feature b and an uncertainty logit; a knowledge review
decoder refines d3..d5 with plain, reverse and uncertainty attention; the
final head reads cat[d2, d3', d4', d5', b].

`base` scales the encoder (64 is ResNet-18's 64/64/128/256/512) and
`channels` the decoder width C (64 in the paper). The full configuration,
ArcdNet(bands=3, base=64, channels=64), has about 14.3 M parameters.

Where the description leaves a detail open we say what we chose:
- the two 3-D convolutions of a temporal difference module run in parallel
  on the stacked dates and their outputs are summed;
- the texture stem's temporal difference uses a temporal difference module
  like the pyramid levels do;
- the 3x3 convolution after the knowledge review (cat with m2) has BN+ReLU.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def upsample_to(x: Tensor, ref: Tensor) -> Tensor:
    if x.shape[-2:] == ref.shape[-2:]:
        return x
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


# --- encoder: ResNet-18-D -------------------------------------------------------------


class BasicBlockD(nn.Module):
    """ResNet basic block; the shortcut downsamples by average pooling then a 1x1 conv (the 'D' tweak)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or cin != cout:
            layers: List[nn.Module] = []
            if stride != 1:
                layers.append(nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False))
            layers += [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.shortcut: nn.Module = nn.Sequential(*layers)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18D(nn.Module):
    """Deep stem (three 3x3 convs) and four stages of two basic blocks; returns c2..c5."""

    def __init__(self, bands: int = 3, base: int = 64) -> None:
        super().__init__()
        widths = [base, base, 2 * base, 4 * base, 8 * base]
        self.widths = widths
        self.stem = nn.Sequential(
            conv_bn_relu(bands, base // 2, 3, 2),
            conv_bn_relu(base // 2, base // 2),
            conv_bn_relu(base // 2, widths[0]),
        )
        self.pool = nn.MaxPool2d(3, 2, 1)
        stages = []
        cin = widths[0]
        for i, cout in enumerate(widths[1:]):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlockD(cin, cout, stride), BasicBlockD(cout, cout)))
            cin = cout
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> List[Tensor]:
        x = self.pool(self.stem(x))
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats  # c2 (stride 4), c3 (8), c4 (16), c5 (32)


# --- neck -------------------------------------------------------------------------------


class PyramidPooling(nn.Module):
    """Adaptive pools 1, 2, 3, 5, each 1x1 conv to C, upsampled, concatenated with c5, 3x3 conv to C."""

    def __init__(self, cin: int, channels: int, bins: Sequence[int] = (1, 2, 3, 5)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(conv_bn_relu(cin, channels, 1) for _ in self.bins)
        self.fuse = conv_bn_relu(cin + len(self.bins) * channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        pooled = [upsample_to(branch(F.adaptive_avg_pool2d(x, b)), x) for b, branch in zip(self.bins, self.branches)]
        return self.fuse(torch.cat([x] + pooled, 1))


class FeatureFusion(nn.Module):
    """FFM(high, low): attention from the upsampled high-level map re-weights the low-level one."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.att = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.refine = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c))
        self.out = conv_bn_relu(2 * c, c)

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        high = upsample_to(high, low)
        att = torch.sigmoid(self.att(high))
        low = self.refine(low * att + low)
        return self.out(torch.cat([high, low], 1))


class TemporalDifference(nn.Module):
    """Stack the dates on a depth axis of 2; two 3-D convs [2,3,3] (stride [2,1,1]) +BN3d+ReLU, summed."""

    def __init__(self, channels: int) -> None:
        super().__init__()

        def branch() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv3d(channels, channels, (2, 3, 3), (2, 1, 1), (0, 1, 1), bias=False),
                nn.BatchNorm3d(channels),
                nn.ReLU(inplace=True),
            )

        self.a = branch()
        self.b = branch()

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        stacked = torch.stack([x1, x2], dim=2)  # B, C, 2, H, W
        return (self.a(stacked) + self.b(stacked)).squeeze(2)


def head(channels: int) -> nn.Sequential:
    """3x3 conv+BN+ReLU, then 1x1 conv to one logit."""
    return nn.Sequential(conv_bn_relu(channels, channels), nn.Conv2d(channels, 1, 1))


# --- knowledge review decoder -----------------------------------------------------------


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        weights = self.fc(x.mean(dim=(2, 3)))
        return x * weights[:, :, None, None]


class FeatureEnhancement(nn.Module):
    """FEU(x, mask): 1x1 conv+BN+ReLU; x*mask + x; squeeze-excitation; 3x3 conv 2C -> C +BN+ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pre = conv_bn_relu(2 * channels, 2 * channels, 1)
        self.se = SqueezeExcitation(2 * channels)
        self.post = conv_bn_relu(2 * channels, channels)

    def forward(self, x: Tensor, mask: Tensor = None) -> Tensor:
        x = self.pre(x)
        if mask is not None:
            x = x * mask + x
        return self.post(self.se(x))


class KnowledgeReview(nn.Module):
    """Refines one level d_k with d2: plain, reverse-attention and uncertainty-attention FEUs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.plain = FeatureEnhancement(channels)
        self.reverse = FeatureEnhancement(channels)
        self.uncertain = FeatureEnhancement(channels)
        self.fuse = conv_bn_relu(channels + 1, channels)

    def forward(self, d2: Tensor, dk: Tensor, m2: Tensor, mk: Tensor) -> Tensor:
        f = torch.cat([d2, dk], 1)
        s2, sk = torch.sigmoid(m2), torch.sigmoid(mk)
        out = self.plain(f) + self.reverse(f, 1 - sk) + self.uncertain(f, (1 - sk) * s2 + (1 - s2) * sk)
        return self.fuse(torch.cat([out, m2], 1))


# --- the network ------------------------------------------------------------------------


@register("arcdnet")
class ArcdNet(nn.Module):
    """AR-CDNet. forward(before, after) -> (change logit, uncertainty logit, [m2..m5 logits]).

    All maps come back at the input size; the auxiliary logits only in
    training mode (the list is empty in eval mode, where they are not used).
    """

    def __init__(self, bands: int = 3, base: int = 64, channels: int = 64) -> None:
        super().__init__()
        if bands < 1 or base < 8 or channels < 8:
            raise ValueError(f"ArcdNet needs bands >= 1, base >= 8, channels >= 8 (got {bands}, {base}, {channels})")
        c = channels
        self.bands = bands
        self.encoder = ResNet18D(bands, base)
        w = self.encoder.widths
        self.reduce = nn.ModuleList(conv_bn_relu(w[i], c, 1) for i in (1, 2, 3))
        self.ppm = PyramidPooling(w[4], c)
        self.ffm = nn.ModuleList(FeatureFusion(c) for _ in range(3))  # for p4, p3, p2
        self.tdm = nn.ModuleList(TemporalDifference(c) for _ in range(4))  # d2..d5
        self.texture = nn.Sequential(conv_bn_relu(bands, 32, 3, 2), conv_bn_relu(32, c, 3, 2))
        self.texture_tdm = TemporalDifference(c)
        self.uncertainty_ffm = FeatureFusion(c)
        self.uncertainty_head = head(c)
        self.aux_heads = nn.ModuleList(head(c) for _ in range(4))  # m2..m5
        self.review = nn.ModuleList(KnowledgeReview(c) for _ in range(3))  # d3'..d5'
        self.final = nn.Sequential(conv_bn_relu(5 * c, c, 1), head(c))

    def pyramid(self, image: Tensor) -> List[Tensor]:
        c2, c3, c4, c5 = self.encoder(image)
        r2, r3, r4 = (reduce(x) for reduce, x in zip(self.reduce, (c2, c3, c4)))
        p5 = self.ppm(c5)
        p4 = self.ffm[0](p5, r4)
        p3 = self.ffm[1](p4, r3)
        p2 = self.ffm[2](p3, r2)
        return [p2, p3, p4, p5]

    def forward(self, before: Tensor, after: Tensor) -> Tuple[Tensor, Tensor, List[Tensor]]:
        size = before.shape[-2:]
        both = self.pyramid(torch.cat([before, after], 0))  # one encoder pass for both dates
        n = before.shape[0]
        d = [tdm(p[:n], p[n:]) for tdm, p in zip(self.tdm, both)]
        d2 = d[0]
        d_up = [upsample_to(x, d2) for x in d[1:]]

        texture = self.texture(torch.cat([before, after], 0))
        t = self.texture_tdm(texture[:n], texture[n:])
        b = upsample_to(self.uncertainty_ffm(d2, t), d2)
        uncertainty = self.uncertainty_head(b)

        m = [aux(x) for aux, x in zip(self.aux_heads, [d2] + d_up)]
        reviewed = [rev(d2, dk, m[0], mk) for rev, dk, mk in zip(self.review, d_up, m[1:])]
        logit = self.final(torch.cat([d2] + reviewed + [b], 1))

        def full(x: Tensor) -> Tensor:
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)

        aux_out = [full(x) for x in m] if self.training else []
        return full(logit), full(uncertainty), aux_out


# --- losses -----------------------------------------------------------------------------


def dice_loss(logit: Tensor, target: Tensor, valid: Tensor = None, eps: float = 1.0) -> Tensor:
    """1 - Dice of sigmoid(logit) against a 0/1 target (over the batch, valid pixels only)."""
    p = torch.sigmoid(logit)
    if valid is not None:
        p, target = p * valid, target * valid
    inter = (p * target).sum()
    return 1 - (2 * inter + eps) / (p.sum() + target.sum() + eps)


def bce(logit: Tensor, target: Tensor, valid: Tensor = None) -> Tensor:
    loss = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    if valid is None:
        return loss.mean()
    return (loss * valid).sum() / valid.sum().clamp_min(1)


def arcdnet_loss(
    outputs: Tuple[Tensor, Tensor, List[Tensor]], target: Tensor, valid: Tensor = None
) -> Tuple[Tensor, dict]:
    """BCE + (1 - Dice) on the final map and on m2..m5, plus BCE(u, |stopgrad(p) - y|); weights 1.

    `target` is (B, 1, H, W) in {0, 1}; `valid` an optional mask of labelled pixels.
    """
    logit, uncertainty, aux = outputs
    parts = {"final": bce(logit, target, valid) + dice_loss(logit, target, valid)}
    for i, m in enumerate(aux, start=2):
        parts[f"m{i}"] = bce(m, target, valid) + dice_loss(m, target, valid)
    error = (torch.sigmoid(logit).detach() - target).abs()
    parts["uncertainty"] = bce(uncertainty, error, valid)
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}
