"""The registered model family: MLP, CNN and a small ResNet, all width-scaled.

Every layer is a plain ``nn.Linear`` / ``nn.Conv2d`` whose sizes are readable
from the module (``in_features``, ``out_channels`` ...), held in ``nn.Sequential``
or ``nn.ModuleList`` containers in forward order, so the fragments layer can
walk the layer graph and slice by index without knowing the model's name.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from fedshrink.models.registry import ModelSpec, channels, norm_layer, register_model


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] x len(hidden) -> Linear."""

    base_hidden = (256, 128)

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        c, h, w = spec.input_shape
        sizes = [c * h * w] + [channels(b, spec.width) for b in self.base_hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in itertools.pairwise(sizes):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(sizes[-1], spec.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, K)
        logits: torch.Tensor = self.net(x)
        return logits


class CNN(nn.Module):
    """[Conv3x3 -> norm -> ReLU -> MaxPool2 while H > 1] per stage, global average pool, MLP head.

    Stages (32, 64, 128) at width 1. Pooling stops once the feature map is 1x1,
    so the same definition serves 8x8 (digits), 28x28 (MNIST) and 32x32 (CIFAR).
    """

    base_channels = (32, 64, 128)
    base_hidden = 128

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        c_in, h, _ = spec.input_shape
        layers: list[nn.Module] = []
        for base in self.base_channels:
            c_out = channels(base, spec.width)
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), norm_layer(spec.norm, c_out), nn.ReLU()]
            if h > 1:
                layers.append(nn.MaxPool2d(2))
                h //= 2
            c_in = c_out
        self.features = nn.Sequential(*layers)
        hidden = channels(self.base_hidden, spec.width)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in, hidden),
            nn.ReLU(),
            nn.Linear(hidden, spec.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.features(x)  # (B, C', H', W')
        z = z.mean(dim=(2, 3), keepdim=True)  # (B, C', 1, 1)
        logits: torch.Tensor = self.head(z)  # (B, K)
        return logits


class BasicBlock(nn.Module):
    """conv-norm-relu-conv-norm plus a shortcut (1x1 conv when shape changes), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"  # a norm supplies the shift; without one the convolution needs its own
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = norm_layer(norm, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=bias)
        self.norm2 = norm_layer(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), norm_layer(norm, c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet (8 layers at depth 1): stem, three stages of BasicBlocks, GAP, Linear.

    Stage widths (16, 32, 64) at width 1; stages 2 and 3 halve the resolution.
    """

    base_channels = (16, 32, 64)
    blocks_per_stage = 1

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        widths = [channels(b, spec.width) for b in self.base_channels]
        self.stem = nn.Sequential(
            nn.Conv2d(spec.input_shape[0], widths[0], 3, padding=1, bias=spec.norm == "none"),
            norm_layer(spec.norm, widths[0]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            for j in range(self.blocks_per_stage):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(c_in, c_out, stride, spec.norm))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, spec.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.blocks(self.stem(x))  # (B, C', H', W')
        logits: torch.Tensor = self.fc(z.mean(dim=(2, 3)))  # (B, K)
        return logits


register_model("mlp")(MLP)
register_model("cnn")(CNN)
register_model("resnet")(ResNet)
