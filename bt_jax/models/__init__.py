"""Flax models: the Caffe-style VGGFace2 ResNet, the projector and the Barlow Twins pair."""

from bt_jax.models.resnet import Bottleneck, CaffeResNet, resnet50, small_resnet, tiny_resnet
from bt_jax.models.barlow import BarlowTwins, Projector, parse_projector_sizes

# Backbones by their config.model.arch name.
ARCHS = {"resnet50": resnet50, "small": small_resnet, "tiny": tiny_resnet}

__all__ = [
    "ARCHS", "BarlowTwins", "Bottleneck", "CaffeResNet", "Projector", "parse_projector_sizes",
    "resnet50", "small_resnet", "tiny_resnet",
]
