"""The same Barlow Twins step in PyTorch: the baseline our step is measured against.

It follows the earlier work's code (facebookresearch/barlowtwins ``main.py``) through
``bt_jax.reference.torch_models``: the Caffe ResNet-50 with the same pool window as ours (or the
Inception-ResNet-v1, whole or the head after a frozen trunk), the Linear/BN/ReLU
projector, the affine-free BatchNorm and cross-correlation loss, and the recipe's
optimizer (the reference LARS with its per-parameter loop, or AdamW with the same
parameter groups as ours). Like our step it also normalises the uint8 input and flips
each image at random, so both sides do the same work per step; with a frozen trunk the
input is its float16 activations, cast to float32 as ours are.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bt_jax.models.barlow import parse_projector_sizes
from bt_jax.data.preprocess import NORMALIZATIONS
from bt_jax.reference.torch_models import LARS, BarlowTwinsReference, CaffeResNet50


def backbone_for(config, image_size: int):
    """(PyTorch backbone, its output features) mirroring ``config.model``."""
    from bt_jax.reference import torch_models
    from bt_jax.network import trunk
    arch = config.model.arch
    if arch == "resnet50":
        from bt_jax.models.resnet import resnet50
        window = config.model.pool_window
        return (CaffeResNet50(num_classes=None, pool_window=window),
                resnet50(pool_window=window).feature_dim(image_size))
    if arch in trunk.INCEPTION_ARCHS:
        build = (torch_models.inception_resnet_v1 if arch == "inception_resnet_v1"
                 else torch_models.tiny_inception_resnet)
        backbone = build(**trunk.head_settings(config))
        return backbone, backbone.feature_dim()
    raise ValueError(f"no PyTorch mirror of config.model.arch={arch!r}")


def optimizer_for(model, config):
    """The recipe's optimizer over the groups ours uses: weights (ndim != 1) and biases,
    the backbone's at ``backbone_lr_scale`` of the rate if that is set. The schedule only
    scales these rates, so its value at step 0 does not matter for timing."""
    o = config.optim
    scale = 1.0 if o.backbone_lr_scale is None else o.backbone_lr_scale
    groups = []
    for part, factor in ((model.backbone, scale), (model.projector, 1.0)):
        params = list(part.parameters())
        groups.append(([p for p in params if p.ndim != 1], factor, True))
        groups.append(([p for p in params if p.ndim == 1], factor, False))
    if o.name == "adamw":
        return torch.optim.AdamW(
            [{"params": p, "lr": o.lr * f, "weight_decay": o.weight_decay if w else 0.0}
             for p, f, w in groups if p], lr=o.lr)
    lr = o.batch_size / 256
    return LARS([{"params": p, "lr": lr * f * (o.lr_weights if w else o.lr_biases)}
                 for p, f, w in groups if p], lr=lr, weight_decay=o.weight_decay,
                momentum=o.momentum, eta=o.eta)


class TorchStep:
    """The PyTorch step on a fixed batch; ``bf16`` runs the model under CPU/GPU autocast
    (bfloat16 convolutions and matmuls, float32 weights and loss), the usual mixed
    precision of PyTorch; ``channels_last`` (default: on GPUs only) stores activations
    NHWC."""

    def __init__(self, case, *, bf16: bool = False, threads: int = 0, device: str = "cpu",
                 channels_last: bool | None = None, seed: int = 0):
        from bt_jax.network import trunk
        if threads:
            torch.set_num_threads(threads)
        config = case.config()
        torch.manual_seed(seed)
        self.device, self.bf16, self.lambd = device, bf16, config.loss.lambd
        self.frozen = trunk.is_frozen(config)
        backbone, features = backbone_for(config, case.image_size)
        sizes = (features,) + parse_projector_sizes(case.projector)
        self.model = BarlowTwinsReference(backbone, sizes).to(device).train()
        # NHWC: what a tuned PyTorch GPU run uses (cuDNN), and oneDNN's other layout on CPU.
        self.channels_last = device != "cpu" if channels_last is None else channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if device != "cpu":
            torch.backends.cudnn.benchmark = True
        self.optimizer = optimizer_for(self.model, config)
        norm = NORMALIZATIONS[config.data.normalization]
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(norm["mean"], device=device).view(shape)
        self.std = torch.tensor(norm["std"], device=device).view(shape)
        self.scale, self.bgr = norm["scale"], norm["bgr"]
        self.views = self._random_views(config, seed)
        self.images = 2 * case.batch
        self.loss = float("nan")

    def _random_views(self, config, seed: int):
        """The two views: uint8 NHWC images, or a frozen trunk's activations (NCHW)."""
        from bt_jax.benchmark.jax_step import random_inputs
        from bt_jax.network import embedding

        rng = np.random.default_rng(seed)
        shape, dtype = embedding.input_spec(config)
        views = [torch.from_numpy(random_inputs(config, shape, dtype, rng)) for _ in range(2)]
        if self.frozen:
            views = [v.permute(0, 3, 1, 2).contiguous() for v in views]
        return [v.to(self.device) for v in views]

    def _input(self, view):
        """uint8 NHWC -> normalised float NCHW with a random horizontal flip per image;
        activations only become float32, as ``embedding.network_input`` makes ours."""
        if self.frozen:
            x = view.float()
            return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        x = view.permute(0, 3, 1, 2).float()
        if self.bgr:
            x = x.flip(1)
        flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
        x = torch.where(flip, x.flip(3), x)
        x = (x * self.scale - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _sync(self):
        if self.device != "cpu":
            torch.cuda.synchronize()

    def __call__(self) -> float:
        """Run one step; seconds until it is done."""
        self._sync()
        start = time.perf_counter()
        x1, x2 = (self._input(v) for v in self.views)
        with torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16, enabled=self.bf16):
            z1 = self.model.projector(self.model.backbone(x1))
            z2 = self.model.projector(self.model.backbone(x2))
        loss = self.model.loss(z1.float(), z2.float(), self.lambd)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._sync()
        elapsed = time.perf_counter() - start
        self.loss = float(loss.detach())
        return elapsed

    def count_flops(self) -> float:
        """FLOPs of one step by PyTorch's own counter (convolutions and matmuls, forward
        and backward): a cross-check of XLA's count for the same step."""
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as counter:
            self()
        return float(counter.get_total_flops())

    def close(self) -> None:
        self.model = self.optimizer = self.views = None
