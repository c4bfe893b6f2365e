"""Reference CNNs in PyTorch, in the ImageNet configuration of their papers.

The width-slimming literature (Slimmable Networks, US-Nets, SP-Net, DS-Net) reports on these
models, so they are the zoo that conversion, training and benchmarks are checked on:

* :func:`mobilenet_v2` (Sandler et al., 2018): inverted residuals, ReLU6, width multiplier;
* :func:`resnet18`, :func:`resnet50` (He et al., 2016): basic / bottleneck blocks, projection
  shortcuts where the shape changes; downsampling in the first conv of a block, as in the
  original release (torchvision's "v1.5" moves a bottleneck's stride to the 3x3 conv);
* :func:`vgg16_bn` (Simonyan & Zisserman, 2015, configuration D, with BatchNormalization);
* :func:`mobilenet_v3_large`, :func:`mobilenet_v3_small` (Howard et al., 2019): hardswish,
  squeeze-and-excitation with a hardsigmoid gate, 5x5 depthwise convs;
* :func:`efficientnet_b0` (Tan & Le, 2019): MBConv blocks with SiLU and sigmoid-gated
  squeeze-and-excitation;
* :func:`preact_resnet18` (He et al., 2016, "Identity Mappings"): BN -> ReLU -> conv, so no
  batch norm follows a conv;
* :func:`densenet121` (Huang et al., 2017): dense blocks of BN -> ReLU -> conv over concatenations;
* :func:`shufflenet_v2` (Ma et al., 2018, 1.0x): channel split, concat and channel shuffle;
* :func:`unet_small` (Ronneberger et al., 2015, narrowed): max-pool down, bilinear up, skip
  concatenations, a logit per pixel;
* :func:`resnet_small`, :func:`mobilenet_v2_small`: the same blocks sized for 16-32 px inputs
  (the training benchmarks' data sets), with ``in_channels`` for grey images.

All take ``num_classes``. This module needs torch (``pip install slimrt[convert]``); ``import
slimrt`` does not import it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["MODELS", "VGG", "DenseNet", "EfficientNet", "MobileNetV2", "MobileNetV3", "PreActResNet", "ResNet",
           "create", "densenet121", "efficientnet_b0", "mobilenet_v2", "mobilenet_v2_small", "mobilenet_v3_large",
           "mobilenet_v3_small", "preact_resnet18", "resnet18", "resnet50", "resnet_small", "shufflenet_v2",
           "ShuffleNetV2", "UNet", "unet_small", "vgg16_bn"]


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = nn.ReLU, bias: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=bias),
                               nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


# ---- MobileNetV2 ----------------------------------------------------------------------


def _divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without dropping more than 10% (as in the paper's code)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear); residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   _conv_bn(hidden, cout, 1, act=None)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 for 224x224 ImageNet (Table 2 of the paper)."""

    # expansion t, output channels c, repeats n, first stride s
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 in_channels: int = 3, settings: tuple[tuple[int, int, int, int], ...] | None = None,
                 stem: int = 32, last: int = 1280, stem_stride: int = 2) -> None:
        super().__init__()
        cin = _divisible(stem * width_mult)
        last = _divisible(last * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn(in_channels, cin, 3, stem_stride, act=nn.ReLU6)]
        for t, c, n, s in settings or self.SETTINGS:
            cout = _divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_conv_bn(cin, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# ---- ResNet ---------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Two 3x3 convs; used by ResNet-18/34."""

    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv_bn(cin, width, 3, stride)
        self.conv2 = _conv_bn(width, cout, 3, act=None)
        self.shortcut = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4); used by ResNet-50/101/152."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = _conv_bn(cin, width, 1, stride)
        self.conv2 = _conv_bn(width, width, 3)
        self.conv3 = _conv_bn(width, cout, 1, act=None)
        self.shortcut = _conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for 224x224 ImageNet (Table 1 of the paper)."""

    def __init__(self, block: type[BasicBlock | Bottleneck], depths: tuple[int, ...],
                 num_classes: int = 1000, in_channels: int = 3,
                 widths: tuple[int, ...] = (64, 128, 256, 512), small_input: bool = False) -> None:
        super().__init__()
        if small_input:  # CIFAR-style: a 3x3 stem at stride 1, no max pooling
            self.stem = _conv_bn(in_channels, widths[0], 3, 1)
        else:
            self.stem = nn.Sequential(_conv_bn(in_channels, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(depth):
                blocks.append(block(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = len(stages)
        for i, stage in enumerate(stages):  # torchvision's names: layer1, layer2, ...
            self.add_module(f"layer{i + 1}", stage)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


# ---- VGG ------------------------------------------------------------------------------


class VGG(nn.Module):
    """VGG-16 (configuration D) with BatchNormalization after every conv (the convs keep the
    paper's biases).

    The classifier reads the 512 x (image_size/32)^2 features of the last pool: 7x7 for the
    paper's 224x224 input; pass a smaller ``image_size`` to build the same network for
    smaller inputs.
    """

    CONFIG_D = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = 1000, image_size: int = 224, dropout: float = 0.5) -> None:
        super().__init__()
        if image_size % 32 != 0:
            raise ValueError(f"VGG needs an image_size divisible by 32 (five 2x2 pools), got {image_size}")
        layers: list[nn.Module] = []
        cin = 3
        for item in self.CONFIG_D:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(_conv_bn(cin, int(item), 3, bias=True))
                cin = int(item)
        self.features = nn.Sequential(*layers)
        side = image_size // 32
        self.classifier = nn.Sequential(
            nn.Linear(512 * side * side, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


# ---- MobileNetV3 and EfficientNet ------------------------------------------------------


class SqueezeExcitation(nn.Module):
    """Global pool -> 1x1 conv -> act -> 1x1 conv -> gate, times the input (Hu et al., 2018)."""

    def __init__(self, channels: int, squeezed: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.act = act(inplace=True)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.fc2(self.act(self.fc1(self.pool(x))))) * x


class MBConv(nn.Module):
    """Expand (1x1) -> depthwise k x k -> optional squeeze-and-excitation -> project (1x1,
    linear); residual when shapes match. MobileNetV3's bneck and EfficientNet's MBConv."""

    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int, act: type[nn.Module],
                 se: int, gate: type[nn.Module]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden != cin:
            layers.append(_conv_bn(cin, hidden, 1, act=act))
        layers.append(_conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=act))
        if se:
            layers.append(SqueezeExcitation(hidden, se, nn.ReLU if gate is nn.Hardsigmoid else act, gate))
        layers.append(_conv_bn(hidden, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3(nn.Module):
    """MobileNetV3 for 224x224 ImageNet (Tables 1 and 2 of the paper; torchvision's layout)."""

    # input, kernel, expanded, output, squeeze-and-excitation, hardswish, stride
    LARGE = ((16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
             (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
             (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
             (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
             (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1))
    SMALL = ((16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
             (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
             (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
             (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1))

    def __init__(self, settings: tuple[tuple[Any, ...], ...], last: int, num_classes: int = 1000,
                 dropout: float = 0.2, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, settings[0][0], 3, 2, act=nn.Hardswish)]
        for cin, k, hidden, cout, se, hswish, stride in settings:
            layers.append(MBConv(cin, hidden, cout, k, stride, nn.Hardswish if hswish else nn.ReLU,
                                 _divisible(hidden // 4) if se else 0, nn.Hardsigmoid))
        cin = settings[-1][3]
        layers.append(_conv_bn(cin, 6 * cin, 1, act=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(6 * cin, last), nn.Hardswish(inplace=True), nn.Dropout(dropout),
                                        nn.Linear(last, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class EfficientNet(nn.Module):
    """EfficientNet-B0 for 224x224 ImageNet (Table 1 of the paper; torchvision's layout)."""

    # expansion, kernel, first stride, input, output, repeats
    B0 = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
          (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, 32, 3, 2, act=nn.SiLU)]
        for t, k, s, cin, cout, n in self.B0:
            for i in range(n):
                c = cin if i == 0 else cout
                layers.append(MBConv(c, c * t, cout, k, s if i == 0 else 1, nn.SiLU, max(1, c // 4), nn.Sigmoid))
        layers.append(_conv_bn(320, 1280, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# ---- pre-activation ResNet and DenseNet ------------------------------------------------


class PreActBlock(nn.Module):
    """BN -> ReLU -> 3x3 conv, twice; a projection shortcut reads the pre-activated input."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.bn1(x))
        y = self.conv2(torch.relu(self.bn2(self.conv1(a))))
        return y + (self.shortcut(a) if self.shortcut is not None else x)


class PreActResNet(nn.Module):
    """Pre-activation ResNet-18 for 224x224 ImageNet, with a final BN -> ReLU before the pool."""

    def __init__(self, depths: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 1000, in_channels: int = 3,
                 widths: tuple[int, ...] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(in_channels, widths[0], 7, 2), nn.MaxPool2d(3, 2, 1))
        blocks: list[nn.Module] = []
        cin = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            for j in range(depth):
                blocks.append(PreActBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(cin)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class DenseLayer(nn.Module):
    """BN -> ReLU -> 1x1 conv (4k) -> BN -> ReLU -> 3x3 conv (k), concatenated to its input."""

    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, 4 * growth, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(torch.relu(self.bn2(self.conv1(torch.relu(self.bn1(x))))))
        return torch.cat([x, y], 1)


class DenseNet(nn.Module):
    """DenseNet-BC for 224x224 ImageNet (DenseNet-121: growth 32, blocks of 6, 12, 24, 16 layers;
    transitions BN -> ReLU -> 1x1 conv halving the channels -> 2x2 average pool)."""

    def __init__(self, blocks: tuple[int, ...] = (6, 12, 24, 16), growth: int = 32, stem: int = 64,
                 num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, stem, 7, 2), nn.MaxPool2d(3, 2, 1)]
        c = stem
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i < len(blocks) - 1:
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False),
                           nn.AvgPool2d(2, 2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# ---- ShuffleNetV2 ----------------------------------------------------------------------


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).contiguous().view(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's unit: at stride 1 a channel split, one half through 1x1 -> depthwise 3x3 ->
    1x1 and concatenated back to the other; at stride 2 both halves downsample. Then a shuffle."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        self.branch1 = nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                                     _conv_bn(cin, half, 1)) if stride > 1 else nn.Identity()
        self.branch2 = nn.Sequential(_conv_bn(cin if stride > 1 else half, half, 1),
                                     _conv_bn(half, half, 3, stride, groups=half, act=None), _conv_bn(half, half, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            y = torch.cat([a, self.branch2(b)], 1)
        else:
            y = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return _channel_shuffle(y, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 for 224x224 ImageNet (Table 5 of the paper; torchvision's layout)."""

    def __init__(self, repeats: tuple[int, ...] = (4, 8, 4), channels: tuple[int, ...] = (24, 116, 232, 464, 1024),
                 num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(in_channels, channels[0], 3, 2), nn.MaxPool2d(3, 2, 1))
        units: list[nn.Module] = []
        cin = channels[0]
        for n, cout in zip(repeats, channels[1:-1]):
            for i in range(n):
                units.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*units)
        self.conv5 = _conv_bn(cin, channels[-1], 1)
        self.fc = nn.Linear(channels[-1], num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv5(self.stages(self.stem(x))).mean((2, 3)))


# ---- U-Net ----------------------------------------------------------------------------


class UNet(nn.Module):
    """U-Net: (3x3 conv -> BN -> ReLU) x 2 per level, 2x2 max pooling down, bilinear upsampling
    (align_corners=False) and concatenation with the encoder's level up, a 1x1 conv to one logit
    per class and pixel. Inputs divisible by 2^(levels - 1)."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(_conv_bn(cin, cout, 3), _conv_bn(cout, cout, 3))

        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(block(cin, w))
            cin = w
        self.up = nn.ModuleList(block(widths[i] + widths[i + 1], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(torch.cat([skip, x], 1))
        return self.head(x)


# ---- constructors ---------------------------------------------------------------------


def mobilenet_v2(num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3) -> MobileNetV2:
    """MobileNetV2 (3.4M parameters and 300M MACs at 224x224, width 1.0)."""
    return MobileNetV2(num_classes, width_mult, in_channels=in_channels)


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 (11.7M parameters, 1.8G MACs at 224x224)."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50 (25.6M parameters, about 4G MACs at 224x224)."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


def resnet_small(num_classes: int = 10, in_channels: int = 1, widths: tuple[int, int, int] = (16, 32, 64),
                 depths: tuple[int, int, int] = (1, 1, 1)) -> ResNet:
    """A CIFAR-style ResNet for 16-32 px inputs (ResNet-8 by default: 3 stages of basic blocks,
    a 3x3 stem at stride 1, 78k parameters)."""
    return ResNet(BasicBlock, depths, num_classes, in_channels, widths, small_input=True)


def mobilenet_v2_small(num_classes: int = 10, in_channels: int = 1) -> MobileNetV2:
    """MobileNetV2 for 16-32 px inputs: inverted residuals (expansion 4), a 3x3 stem at
    stride 1, three downsampling stages, a 128-channel last conv."""
    settings = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 1, 2))
    return MobileNetV2(num_classes, 1.0, 0.0, in_channels, settings, stem=16, last=128, stem_stride=1)


def vgg16_bn(num_classes: int = 1000, image_size: int = 224) -> VGG:
    """VGG-16 with BatchNormalization (138M parameters, 15.5G MACs at 224x224)."""
    return VGG(num_classes, image_size)


def mobilenet_v3_large(num_classes: int = 1000, in_channels: int = 3) -> MobileNetV3:
    """MobileNetV3-Large (5.5M parameters, 217M MACs at 224x224)."""
    return MobileNetV3(MobileNetV3.LARGE, 1280, num_classes, in_channels=in_channels)


def mobilenet_v3_small(num_classes: int = 1000, in_channels: int = 3) -> MobileNetV3:
    """MobileNetV3-Small (2.5M parameters, 56M MACs at 224x224)."""
    return MobileNetV3(MobileNetV3.SMALL, 1024, num_classes, in_channels=in_channels)


def efficientnet_b0(num_classes: int = 1000, in_channels: int = 3) -> EfficientNet:
    """EfficientNet-B0 (5.3M parameters, 390M MACs at 224x224)."""
    return EfficientNet(num_classes, in_channels=in_channels)


def preact_resnet18(num_classes: int = 1000, in_channels: int = 3) -> PreActResNet:
    """Pre-activation ResNet-18 (11.7M parameters, 1.8G MACs at 224x224)."""
    return PreActResNet((2, 2, 2, 2), num_classes, in_channels)


def densenet121(num_classes: int = 1000, in_channels: int = 3) -> DenseNet:
    """DenseNet-121 (8.0M parameters, 2.9G MACs at 224x224)."""
    return DenseNet((6, 12, 24, 16), 32, 64, num_classes, in_channels)


def shufflenet_v2(num_classes: int = 1000, in_channels: int = 3) -> ShuffleNetV2:
    """ShuffleNetV2 1.0x (2.3M parameters, 146M MACs at 224x224)."""
    return ShuffleNetV2(num_classes=num_classes, in_channels=in_channels)


def unet_small(num_classes: int = 2, in_channels: int = 3) -> UNet:
    """A small U-Net: four levels of 16, 32, 64, 128 channels (0.49M parameters, 2.0G MACs at
    224x224)."""
    return UNet(num_classes, in_channels)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "mobilenet_v2": mobilenet_v2, "resnet18": resnet18, "resnet50": resnet50, "vgg16_bn": vgg16_bn,
    "resnet_small": resnet_small, "mobilenet_v2_small": mobilenet_v2_small,
    "mobilenet_v3_large": mobilenet_v3_large, "mobilenet_v3_small": mobilenet_v3_small,
    "efficientnet_b0": efficientnet_b0, "preact_resnet18": preact_resnet18, "densenet121": densenet121,
    "shufflenet_v2": shufflenet_v2, "unet_small": unet_small,
}


def create(name: str, **kwargs: object) -> nn.Module:
    """A zoo model by name (one of :data:`MODELS`), e.g. ``create("resnet18", num_classes=10)``."""
    if name not in MODELS:
        raise ValueError(f"unknown zoo model '{name}'; choose one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)
