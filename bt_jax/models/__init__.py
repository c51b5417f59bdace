"""Flax models: the Caffe-style VGGFace2 ResNet, the projector and the Barlow Twins pair."""

from bt_jax.models.resnet import Bottleneck, CaffeResNet, resnet50, tiny_resnet
from bt_jax.models.barlow import BarlowTwins, Projector, parse_projector_sizes

__all__ = [
    "BarlowTwins", "Bottleneck", "CaffeResNet", "Projector", "parse_projector_sizes",
    "resnet50", "tiny_resnet",
]
