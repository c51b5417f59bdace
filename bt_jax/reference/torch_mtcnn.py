"""PyTorch twins of MTCNN's P-, R- and O-Net (bt_jax.models.mtcnn), for parity tests.

Written from the networks' description, not from the Flax code: NCHW tensors, TensorFlow's
'SAME' max pooling spelled out as padding with -inf, and the dense layers' (width, height,
channel) flattening. ``load`` fills a twin from the same arrays weights/mtcnn.py reads.
"""

from __future__ import annotations

import math
from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def same_max_pool(x: torch.Tensor, size: int, stride: int) -> torch.Tensor:
    """TensorFlow's 'SAME' max pooling: ceil(n / stride) outputs, padding split with the
    extra pixel after, padded cells never chosen."""
    pads = []
    for n in (x.shape[3], x.shape[2]):  # F.pad takes the last axis first
        total = max((math.ceil(n / stride) - 1) * stride + size - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=-math.inf), size, stride)


class PReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        alpha = self.alpha.view(1, -1, *([1] * (x.dim() - 2)))
        return torch.where(x >= 0, x, alpha * x)


def _flatten_caffe(x):
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)  # (n, c, h, w) -> (n, w*h*c)


class PNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 4, 1), nn.Conv2d(32, 2, 1)

    def forward(self, x):
        x = same_max_pool(self.prelu1(self.conv1(x)), 2, 2)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_1(x), torch.softmax(self.conv4_2(x), dim=1)[:, 1]


class RNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), PReLU(64)
        self.fc4, self.prelu4 = nn.Linear(576, 128), PReLU(128)
        self.fc5_1, self.fc5_2 = nn.Linear(128, 4), nn.Linear(128, 2)

    def forward(self, x):
        x = same_max_pool(self.prelu1(self.conv1(x)), 3, 2)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
        x = self.prelu4(self.fc4(_flatten_caffe(self.prelu3(self.conv3(x)))))
        return self.fc5_1(x), torch.softmax(self.fc5_2(x), dim=1)[:, 1]


class ONet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), PReLU(128)
        self.fc5, self.prelu5 = nn.Linear(1152, 256), PReLU(256)
        self.fc6_1, self.fc6_2, self.fc6_3 = (nn.Linear(256, 4), nn.Linear(256, 10),
                                              nn.Linear(256, 2))

    def forward(self, x):
        x = same_max_pool(self.prelu1(self.conv1(x)), 3, 2)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2)
        x = same_max_pool(self.prelu3(self.conv3(x)), 2, 2)
        x = self.prelu5(self.fc5(_flatten_caffe(self.prelu4(self.conv4(x)))))
        return self.fc6_1(x), self.fc6_2(x), torch.softmax(self.fc6_3(x), dim=1)[:, 1]


def load(model: nn.Module, params: Dict[str, Dict[str, np.ndarray]]) -> nn.Module:
    """Fill a twin from Flax-layout params (HWIO kernels, (in, out) dense kernels)."""
    state = {}
    for layer, values in params.items():
        if "alpha" in values:
            state[f"{layer}.alpha"] = torch.from_numpy(values["alpha"].reshape(-1).copy())
            continue
        kernel = values["kernel"]
        kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
        state[f"{layer}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        state[f"{layer}.bias"] = torch.from_numpy(values["bias"].copy())
    model.load_state_dict(state)
    return model.eval()
