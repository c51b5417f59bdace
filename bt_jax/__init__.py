"""bt_jax: Barlow Twins for masked-face recognition in JAX/Flax."""

__version__ = "0.1.0"
