"""PyTorch references of our models, for conversion parity tests and the benchmark.

Imported only where torch is installed (the ``test`` extra pins it); nothing in training
imports this module.

``CaffeResNet50`` follows the VGGFace2 release's PyTorch port: the stride sits on the first
1x1 convolution of a bottleneck, the stem max-pool has no padding and uses ceil mode, the
average pool is a fixed window (7 at 224 px) at stride 1, and the classifier has 8631
identities. ``BarlowTwinsReference`` is the earlier work's model (facebookresearch/
barlowtwins): that backbone, a Linear/BN/ReLU projector, the affine-free BatchNorm and the
cross-correlation loss; ``LARS`` is its optimizer.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)  # Caffe: here
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class CaffeResNet50(nn.Module):
    """The release's backbone; ``num_classes=None`` returns the flattened features."""

    def __init__(self, num_classes=8631, pool_window: int = 7):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=0, ceil_mode=True)
        inplanes = 64
        for index, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
            layer = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layer.append(Bottleneck(inplanes, planes, stride))
                inplanes = planes * 4
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AvgPool2d(pool_window, stride=1)
        self.fc = nn.Linear(2048, num_classes) if num_classes else None

    def features(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x):
        x = self.features(x)
        return x if self.fc is None else self.fc(x)


class BarlowTwinsReference(nn.Module):
    def __init__(self, backbone: nn.Module, sizes):
        super().__init__()
        self.backbone = backbone
        layers = []
        for i in range(len(sizes) - 2):
            layers += [nn.Linear(sizes[i], sizes[i + 1], bias=False),
                       nn.BatchNorm1d(sizes[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-2], sizes[-1], bias=False))
        self.projector = nn.Sequential(*layers)
        self.bn = nn.BatchNorm1d(sizes[-1], affine=False)

    def embed(self, x):
        return self.projector(self.backbone(x))

    def loss(self, z1, z2, lambd: float):
        """The reference loss on one device's batch (its all_reduce is a no-op here)."""
        c = self.bn(z1).T @ self.bn(z2) / z1.shape[0]
        on_diag = torch.diagonal(c).add(-1).pow(2).sum()
        off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
        return on_diag + lambd * off_diag


class LARS(torch.optim.Optimizer):
    """The reference LARS: weight decay and trust ratio on weights (ndim != 1) only,
    momentum on the scaled gradient before the learning rate."""

    def __init__(self, params, lr, weight_decay=1e-6, momentum=0.9, eta=0.001):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum,
                                      eta=eta))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if p.ndim != 1:
                    dp = dp.add(p, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.norm(p), torch.norm(dp)
                    one = torch.ones_like(param_norm)
                    q = torch.where(param_norm > 0.0, torch.where(
                        update_norm > 0, group["eta"] * param_norm / update_norm, one), one)
                    dp = dp.mul(q)
                mu = self.state[p].setdefault("mu", torch.zeros_like(p))
                mu.mul_(group["momentum"]).add_(dp)
                p.add_(mu, alpha=-group["lr"])


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random weights and random BatchNorm statistics, so that every converted tensor matters
    (default BN stats of 0/1 would hide a swapped mean/var or scale/bias)."""
    gen = torch.Generator().manual_seed(seed)
    uniform = lambda t, lo, hi: t.copy_(lo + (hi - lo) * torch.rand(t.shape, generator=gen))
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                * (2.0 / fan_in) ** 0.5)
            if module.bias is not None:
                uniform(module.bias, -0.1, 0.1)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=gen))
            uniform(module.running_var, 0.5, 2.0)
            module.num_batches_tracked.fill_(1000)
            if module.affine:
                uniform(module.weight, 0.5, 1.5)
                uniform(module.bias, -0.1, 0.1)
    return model.eval()
