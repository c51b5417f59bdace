"""PyTorch references of our models, for conversion parity tests and the benchmark.

Imported only where torch is installed (the ``test`` extra pins it); nothing in training
imports this module.

``CaffeResNet50`` follows the VGGFace2 release's PyTorch port: the stride sits on the first
1x1 convolution of a bottleneck, the stem max-pool has no padding and uses ceil mode, the
average pool is a fixed window (7 at 224 px) at stride 1, and the classifier has 8631
identities. ``BarlowTwinsReference`` is the earlier work's model (facebookresearch/
barlowtwins): that backbone, a Linear/BN/ReLU projector, the affine-free BatchNorm and the
cross-correlation loss; ``LARS`` is its optimizer. ``InceptionResNetV1`` is FaceNet's
backbone as ``bt_jax.models.InceptionResNetV1`` builds it, and ``load_flax_variables``
fills it from that model's Flax variables.
"""

from __future__ import annotations

from collections import OrderedDict

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


# ----------------------------------------------------------------------------------------
# FaceNet's Inception-ResNet-v1, as bt_jax.models.inception_resnet lays it out.
#
# Module names follow the Flax ones, so a state-dict key is the Flax path joined by dots:
# ``block17_1.Branch_1.Conv2d_0b_1x7.conv.weight`` is params/block17_1/Branch_1/
# Conv2d_0b_1x7/conv/kernel. TF's SAME padding equals PyTorch's symmetric padding only for
# odd kernels at stride 1, which is every SAME convolution of this network: its stride-2
# convolutions and max-pools are all VALID (see ``tf_same_padding``).

IRV1_BN_EPSILON = 1e-3  # TF-slim's, as in the frozen graphs
IRV1_BN_MOMENTUM = 0.1  # Flax's 0.9: PyTorch weighs the new batch, Flax the old average


def tf_same_padding(kernel, stride: int):
    """TF SAME padding as PyTorch's symmetric ``padding`` argument.

    TF pads ``max(k - s, 0)`` in total when the stride divides the input size
    (``max(k - n % s, 0)`` otherwise), the odd pixel after: an even kernel, or a 3x3 SAME
    at stride 2 on an even-sized map, needs an asymmetric pad that depends on the input
    size. No layer of this network does, so rather than carry such a pad, it is refused.
    """
    if stride != 1 or any(k % 2 == 0 for k in kernel):
        raise ValueError(f"TF SAME padding of a {kernel} kernel at stride {stride} is "
                         "asymmetric; Inception-ResNet-v1 has no such layer, so "
                         "tf_same_padding does not implement it.")
    return tuple((k - 1) // 2 for k in kernel)


def _irv1_layer(name, channels, kernel, stride=1, padding=None):
    return (name, channels, kernel, stride, padding or ("SAME" if stride == 1 else "VALID"))


class ConvBN(nn.Module):
    """TF-slim ``conv2d``: convolution without bias, BatchNorm (with a scale), ReLU."""

    def __init__(self, in_channels: int, spec):
        super().__init__()
        _, channels, kernel, stride, padding = spec
        pad = tf_same_padding(kernel, stride) if padding == "SAME" else 0
        self.conv = nn.Conv2d(in_channels, channels, kernel, stride=stride, padding=pad,
                              bias=False)
        self.BatchNorm = nn.BatchNorm2d(channels, eps=IRV1_BN_EPSILON,
                                        momentum=IRV1_BN_MOMENTUM)

    def forward(self, x):
        return torch.relu(self.BatchNorm(self.conv(x)))


def _branch(in_channels: int, specs) -> nn.Sequential:
    layers = []
    for spec in specs:
        layers.append((spec[0], ConvBN(in_channels, spec)))
        in_channels = spec[1]
    return nn.Sequential(OrderedDict(layers))


class ResidualBlock(nn.Module):
    """block35 / block17 / block8: ``x + scale * up(concat(branches))``, then ReLU unless
    it is the last ``Block8``; the 1x1 up-projection has a bias and no BatchNorm."""

    def __init__(self, in_channels: int, branches, scale: float, activate: bool):
        super().__init__()
        self.scale, self.activate, self.branches = scale, activate, len(branches)
        for k, specs in enumerate(branches):
            self.add_module(f"Branch_{k}", _branch(in_channels, specs))
        mixed = sum(specs[-1][1] for specs in branches)
        self.Conv2d_1x1 = nn.Conv2d(mixed, in_channels, 1, bias=True)

    def forward(self, x):
        mixed = torch.cat([getattr(self, f"Branch_{k}")(x) for k in range(self.branches)], 1)
        x = x + self.scale * self.Conv2d_1x1(mixed)
        return torch.relu(x) if self.activate else x


class Reduction(nn.Module):
    """Mixed_6a / Mixed_7a: stride-2 VALID branches beside a 3x3/2 VALID max-pool."""

    def __init__(self, in_channels: int, branches):
        super().__init__()
        self.branches = len(branches)
        for k, specs in enumerate(branches):
            self.add_module(f"Branch_{k}", _branch(in_channels, specs))
        self.out_channels = sum(specs[-1][1] for specs in branches) + in_channels

    def forward(self, x):
        outs = [getattr(self, f"Branch_{k}")(x) for k in range(self.branches)]
        return torch.cat(outs + [nn.functional.max_pool2d(x, 3, stride=2)], 1)


class GlobalMeanPool(nn.Module):
    """The graph's ``AvgPool_1a_8x8``: a mean over the whole final map (8x8 at 160 px)."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


class DenseBN(nn.Module):
    """The ``Bottleneck``: a linear layer without bias, then BatchNorm."""

    def __init__(self, in_features: int, features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, features, bias=False)
        self.BatchNorm = nn.BatchNorm1d(features, eps=IRV1_BN_EPSILON, momentum=IRV1_BN_MOMENTUM)

    def forward(self, x):
        return self.BatchNorm(self.dense(x))


class InceptionResNetV1(nn.Module):
    """FaceNet's backbone with the options of ``bt_jax.models.InceptionResNetV1``: the
    ``Bottleneck`` embedding, or with ``output='pooled'`` the mean-pooled features;
    ``width_div`` / ``repeats`` for a tiny variant; ``start_after`` / ``stop_after`` to run
    only part of it (its state dict then holds only those layers, as the Flax tree does);
    ``frozen_bn`` keeps BatchNorm on its running statistics in train mode too. NCHW input;
    it also runs on channels_last tensors.
    """

    def __init__(self, repeats=(5, 10, 5), width_div: int = 1, embedding_size: int = 512,
                 scales=(0.17, 0.10, 0.20), output: str = "bottleneck",
                 start_after: str | None = None, stop_after: str | None = None,
                 frozen_bn: bool = False):
        super().__init__()
        if output not in ("bottleneck", "pooled"):
            raise ValueError(f"InceptionResNetV1.output={output!r}: use 'bottleneck' or "
                             "'pooled'.")
        self.frozen_bn = frozen_bn
        layers = self._layers(repeats, width_div, embedding_size, scales)
        names = [name for name, _ in layers]
        for name in filter(None, (start_after, stop_after)):
            if name not in names:
                raise ValueError(f"InceptionResNetV1: no layer {name!r}; layers: {names}")
        first = names.index(start_after) + 1 if start_after else 0
        last = names.index("AvgPool_1a_8x8" if output == "pooled" else "Bottleneck")
        if stop_after:
            last = min(last, names.index(stop_after))
        channels = 3
        for index, (name, build) in enumerate(layers[:last + 1]):
            module, channels = build(channels)
            if index >= first:
                self.add_module(name, module)
        self.out_channels = channels

    def feature_dim(self, image_size: int | None = None) -> int:
        """Channels of the output (any input size: the pool is global)."""
        return self.out_channels

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen_bn:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    @staticmethod
    def _layers(repeats, width_div, embedding_size, scales):
        """(name, build) of every layer in order; ``build(in_channels)`` returns the
        module and its output channels, so that a split network still knows its input."""
        def c(channels):
            return max(1, channels // width_div)

        conv, same = _conv, _keep_channels
        layers = [conv("Conv2d_1a_3x3", c(32), (3, 3), 2, "VALID"),
                  conv("Conv2d_2a_3x3", c(32), (3, 3), 1, "VALID"),
                  conv("Conv2d_2b_3x3", c(64), (3, 3), 1, "SAME"),
                  ("MaxPool_3a_3x3", same(nn.MaxPool2d(3, stride=2))),
                  conv("Conv2d_3b_1x1", c(80), (1, 1), 1, "VALID"),
                  conv("Conv2d_4a_3x3", c(192), (3, 3), 1, "VALID"),
                  conv("Conv2d_4b_3x3", c(256), (3, 3), 2, "VALID")]
        blocks = (("block35", _block35(c)), ("block17", _block17(c)), ("block8", _block8(c)))
        reductions = (("Mixed_6a", _mixed_6a(c)), ("Mixed_7a", _mixed_7a(c)))
        for stage, ((name, branches), count, scale) in enumerate(zip(blocks, repeats, scales)):
            layers += [(f"{name}_{i + 1}", _residual(branches, scale, True))
                       for i in range(count)]
            if stage < 2:
                layers.append((reductions[stage][0], _reduction(reductions[stage][1])))
        layers += [("Block8", _residual(_block8(c), 1.0, False)),
                   ("AvgPool_1a_8x8", same(GlobalMeanPool())),
                   ("Bottleneck", lambda cin: (DenseBN(cin, embedding_size), embedding_size))]
        return layers


def _conv(*spec):
    return spec[0], lambda cin: (ConvBN(cin, spec), spec[1])


def _keep_channels(module):
    return lambda cin: (module, cin)


def _residual(branches, scale, activate):
    return lambda cin: (ResidualBlock(cin, branches, scale, activate), cin)


def _reduction(branches):
    def build(cin):
        module = Reduction(cin, branches)
        return module, module.out_channels
    return build


def _block35(c):
    L = _irv1_layer
    return ((L("Conv2d_1x1", c(32), (1, 1)),),
            (L("Conv2d_0a_1x1", c(32), (1, 1)), L("Conv2d_0b_3x3", c(32), (3, 3))),
            (L("Conv2d_0a_1x1", c(32), (1, 1)), L("Conv2d_0b_3x3", c(32), (3, 3)),
             L("Conv2d_0c_3x3", c(32), (3, 3))))


def _block17(c):
    L = _irv1_layer
    return ((L("Conv2d_1x1", c(128), (1, 1)),),
            (L("Conv2d_0a_1x1", c(128), (1, 1)), L("Conv2d_0b_1x7", c(128), (1, 7)),
             L("Conv2d_0c_7x1", c(128), (7, 1))))


def _block8(c):
    L = _irv1_layer
    return ((L("Conv2d_1x1", c(192), (1, 1)),),
            (L("Conv2d_0a_1x1", c(192), (1, 1)), L("Conv2d_0b_1x3", c(192), (1, 3)),
             L("Conv2d_0c_3x1", c(192), (3, 1))))


def _mixed_6a(c):
    L = _irv1_layer
    return ((L("Conv2d_1a_3x3", c(384), (3, 3), 2),),
            (L("Conv2d_0a_1x1", c(192), (1, 1)), L("Conv2d_0b_3x3", c(192), (3, 3)),
             L("Conv2d_1a_3x3", c(256), (3, 3), 2)))


def _mixed_7a(c):
    L = _irv1_layer
    return ((L("Conv2d_0a_1x1", c(256), (1, 1)), L("Conv2d_1a_3x3", c(384), (3, 3), 2)),
            (L("Conv2d_0a_1x1", c(256), (1, 1)), L("Conv2d_1a_3x3", c(256), (3, 3), 2)),
            (L("Conv2d_0a_1x1", c(256), (1, 1)), L("Conv2d_0b_3x3", c(256), (3, 3)),
             L("Conv2d_1a_3x3", c(256), (3, 3), 2)))


def inception_resnet_v1(**kwargs) -> InceptionResNetV1:
    return InceptionResNetV1(**kwargs)


def tiny_inception_resnet(**kwargs) -> InceptionResNetV1:
    """``bt_jax.models.tiny_inception_resnet``: one block per stage, 1/16 width, 32-d."""
    kwargs.setdefault("embedding_size", 32)
    return InceptionResNetV1(repeats=(1, 1, 1), width_div=16, **kwargs)


# Flax leaf -> PyTorch state-dict leaf, by collection.
_FLAX_LEAVES = {("params", "kernel"): "weight", ("params", "bias"): "bias",
                ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
                ("batch_stats", "var"): "running_var"}


def _flatten(tree, prefix=()):
    for key, value in tree.items():
        if hasattr(value, "items"):
            yield from _flatten(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def flax_to_torch_state(variables):
    """A Flax ``{'params', 'batch_stats'}`` tree as PyTorch state-dict entries, keyed by the
    Flax path joined with dots: HWIO kernels to OIHW, Dense (in, out) to Linear (out, in),
    BatchNorm scale/bias/mean/var to weight/bias/running_mean/running_var. Also returns
    each key's Flax path, for error messages."""
    import numpy as np

    state, origin = {}, {}
    for collection in ("params", "batch_stats"):
        for path, value in _flatten(variables.get(collection, {})):
            flax_name = f"{collection}/{'/'.join(path)}"
            leaf = _FLAX_LEAVES.get((collection, path[-1]))
            if leaf is None:
                raise ValueError(f"{flax_name}: no PyTorch counterpart for a "
                                 f"{path[-1]!r} leaf in {collection!r}.")
            array = np.asarray(value, np.float32)
            if path[-1] == "kernel":
                array = array.transpose(3, 2, 0, 1) if array.ndim == 4 else array.T
            key = ".".join(path[:-1] + (leaf,))
            state[key] = torch.from_numpy(np.ascontiguousarray(array))
            origin[key] = flax_name
    return state, origin


@torch.no_grad()
def load_flax_variables(model: nn.Module, variables) -> nn.Module:
    """Copy a Flax variables tree into ``model`` (e.g. ``InceptionResNetV1``), whose module
    names are the Flax ones. Every tensor must be filled exactly once with its own shape:
    a missing, extra or mis-shaped name is an error listing all of them."""
    state, origin = flax_to_torch_state(variables)
    target = {k: v for k, v in model.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    problems = [f"missing from the Flax tree: {k}" for k in sorted(set(target) - set(state))]
    problems += [f"no place in the PyTorch model for {origin[k]}"
                 for k in sorted(set(state) - set(target))]
    problems += [f"{origin[k]}: Flax gives {tuple(state[k].shape)} as {k}, the PyTorch model "
                 f"has {tuple(target[k].shape)}"
                 for k in sorted(set(state) & set(target)) if state[k].shape != target[k].shape]
    if problems:
        hint = ""
        if any(origin.get(k, "").startswith(("params/backbone/", "batch_stats/backbone/"))
               for k in state):
            hint = ("\n(converted weights nest the network under 'backbone': pass "
                    "{c: variables[c]['backbone'] for c in ('params', 'batch_stats')})")
        raise ValueError(f"load_flax_variables: {len(problems)} problem(s) for "
                         f"{type(model).__name__}:\n  " + "\n  ".join(problems) + hint)
    for key, value in state.items():
        target[key].copy_(value)
    return model
