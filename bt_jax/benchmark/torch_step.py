"""The same Barlow Twins step in PyTorch: the baseline our step is measured against.

It follows the earlier work's code (facebookresearch/barlowtwins ``main.py``) through
``bt_jax.torch_models``: the Caffe ResNet-50 with the same pool window as ours, the
Linear/BN/ReLU projector, the affine-free BatchNorm and cross-correlation loss, and the
reference LARS with its per-parameter loop. Like our step it also normalises the uint8
input and flips each image at random, so both sides do the same work per step.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bt_jax.models import parse_projector_sizes
from bt_jax.preprocess import NORMALIZATIONS
from bt_jax.torch_models import LARS, BarlowTwinsReference, CaffeResNet50


class TorchStep:
    """The PyTorch step on a fixed batch; ``bf16`` runs the model under CPU/GPU autocast
    (bfloat16 convolutions and matmuls, float32 weights and loss), the usual mixed
    precision of PyTorch; ``channels_last`` (default: on GPUs only) stores activations
    NHWC."""

    def __init__(self, case, *, bf16: bool = False, threads: int = 0, device: str = "cpu",
                 channels_last: bool | None = None, seed: int = 0):
        if threads:
            torch.set_num_threads(threads)
        config = case.config()
        torch.manual_seed(seed)
        self.device, self.bf16, self.lambd = device, bf16, config.loss.lambd
        from bt_jax.models import resnet50
        features = resnet50(pool_window=config.model.pool_window).feature_dim(case.image_size)
        backbone = CaffeResNet50(num_classes=None, pool_window=config.model.pool_window)
        sizes = (features,) + parse_projector_sizes(case.projector)
        self.model = BarlowTwinsReference(backbone, sizes).to(device).train()
        # NHWC: what a tuned PyTorch GPU run uses (cuDNN), and oneDNN's other layout on CPU.
        self.channels_last = device != "cpu" if channels_last is None else channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if device != "cpu":
            torch.backends.cudnn.benchmark = True
        weights = [p for p in self.model.parameters() if p.ndim != 1]
        biases = [p for p in self.model.parameters() if p.ndim == 1]
        lr = config.optim.batch_size / 256  # warm-up/cosine only changes this number
        self.optimizer = LARS([{"params": weights, "lr": lr * config.optim.lr_weights},
                               {"params": biases, "lr": lr * config.optim.lr_biases}], lr=lr)
        norm = NORMALIZATIONS[config.data.normalization]
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(norm["mean"], device=device).view(shape)
        self.std = torch.tensor(norm["std"], device=device).view(shape)
        self.scale, self.bgr = norm["scale"], norm["bgr"]
        rng = np.random.default_rng(seed)
        size = (case.batch, case.image_size, case.image_size, 3)
        self.views = [torch.from_numpy(rng.integers(0, 256, size, dtype=np.uint8)).to(device)
                      for _ in range(2)]
        self.images = 2 * case.batch
        self.loss = float("nan")

    def _input(self, view):
        """uint8 NHWC -> normalised float NCHW with a random horizontal flip per image."""
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
