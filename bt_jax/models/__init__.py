"""Flax models: the Caffe-style VGGFace2 ResNet, FaceNet's Inception-ResNet-v1, the
projector and the Barlow Twins pair."""

from bt_jax.models.resnet import Bottleneck, CaffeResNet, resnet50, small_resnet, tiny_resnet
from bt_jax.models.inception_resnet import (InceptionResNetV1, inception_resnet_v1,
                                            tiny_inception_resnet)
from bt_jax.models.barlow import BarlowTwins, Projector, parse_projector_sizes

# Backbones by their config.model.arch name.
ARCHS = {"resnet50": resnet50, "small": small_resnet, "tiny": tiny_resnet,
         "inception_resnet_v1": inception_resnet_v1, "tiny_inception": tiny_inception_resnet}
# The ResNets end in a fixed average-pool window (config.model.pool_window); the
# Inception-ResNet pools globally.
POOL_WINDOW_ARCHS = ("resnet50", "small", "tiny")


def create_backbone(arch: str, pool_window: int, **kwargs):
    """The backbone ``arch`` with the config's settings that apply to it."""
    if arch not in ARCHS:
        raise ValueError(f"config.model.arch={arch!r} is unknown; use one of {sorted(ARCHS)}.")
    if arch in POOL_WINDOW_ARCHS:
        kwargs["pool_window"] = pool_window
    return ARCHS[arch](**kwargs)


__all__ = [
    "ARCHS", "BarlowTwins", "Bottleneck", "CaffeResNet", "InceptionResNetV1", "Projector",
    "create_backbone", "inception_resnet_v1", "parse_projector_sizes", "resnet50",
    "small_resnet", "tiny_inception_resnet", "tiny_resnet",
]
