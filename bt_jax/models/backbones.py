"""The backbones by their ``config.model.arch`` name."""

from bt_jax.models.inception_resnet import inception_resnet_v1, tiny_inception_resnet
from bt_jax.models.resnet import resnet50, small_resnet, tiny_resnet

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
