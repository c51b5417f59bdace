"""Export the whole embedder as an ONNX graph with jax2onnx, for onnxruntime.

The graph is ``Network.embed_function`` (the frozen trunk, if any, and the trained part;
what ``bt_jax.identify.export`` serialises with jax.export) behind the input a user has:
uint8 aligned crops at ``config.data.crop_size``, raw RGB 0-255, resized in the graph to
``config.data.image_size`` exactly as identify's Pillow decoder does (``resize_like_pillow``)
and normalised by the network's own first step. The batch dimension is symbolic.
``bt_jax.identify.onnx_embedder`` reads it back without jax.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import numpy as np

from bt_jax.identify import export
from bt_jax.identify.exported import ONNX_FILE
from bt_jax.identify.onnx_embedder import (INPUT_NAME, INSTALL, METADATA_KEY,
                                           ONNX_FORMAT_VERSION, OUTPUT_NAME, weights_digest)
from bt_jax.network import embedding
from bt_jax.network.network import Network

# Pillow's fixed-point resampling of 8-bit images (libImaging/Resample.c): coefficients
# scaled by 2**22, sums rounded, shifted back and clipped once per pass.
PRECISION_BITS = 32 - 8 - 2
# ONNX opset of the graph: onnxruntime 1.20 and later run it.
OPSET = 21
INPUTS_NOTE = ("aligned face crops, uint8 RGB 0-255, (N, crop_size, crop_size, 3); the graph "
               "resizes them to image_size and normalises them; this project has no face "
               "detector")
RESIZE_NOTE = ("Pillow Image.resize(BILINEAR) from crop_size to image_size, integer for "
               "integer, inside the graph: what identify decodes a crop to, except a JPEG "
               "shrunk 2x or more, which Pillow first scales in its decoder (draft mode)")


def pillow_bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
    """int32 (out_size, in_size): Pillow's bilinear coefficients of one axis, computed as
    its precompute_coeffs and normalize_coeffs_8bpc do (support 1, widened by the scale
    when shrinking; each row normalised in float64, then rounded to 2**-22)."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # bilinear's support is 1 pixel
    weights = np.zeros((out_size, in_size), np.int64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(lo, hi) - center + 0.5) / filterscale))
        if taps.sum() != 0.0:
            taps = taps / taps.sum()
        # C's (int) truncates toward zero after the half is added away from zero.
        scaled = taps * (1 << PRECISION_BITS)
        weights[out, lo:hi] = np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5))
    return weights.astype(np.int32)


def resize_like_pillow(images, size: int):
    """uint8 (N, H, W, 3) -> uint8 (N, size, size, 3), equal to Pillow's bilinear resize
    of each image: the horizontal pass, then the vertical one, each rounded to uint8. In
    int32: 255 x 2**22 and the rounding half fit, so no sum overflows or rounds."""
    half = 1 << (PRECISION_BITS - 1)

    def one_pass(x, weights, spec):
        summed = jnp.einsum(spec, x, jnp.asarray(weights),
                            preferred_element_type=jnp.int32) + half
        # The sums are never negative (bilinear taps are), so division is Pillow's shift.
        return jnp.clip(jax.lax.div(summed, jnp.int32(1 << PRECISION_BITS)), 0, 255)

    x = images.astype(jnp.int32)
    if images.shape[2] != size:
        x = one_pass(x, pillow_bilinear_weights(images.shape[2], size), "nyxc,ox->nyoc")
    if images.shape[1] != size:
        x = one_pass(x, pillow_bilinear_weights(images.shape[1], size), "nyxc,oy->noxc")
    return x.astype(jnp.uint8)


def serving_function(config, variables: Dict[str, Any]) -> Callable:
    """uint8 crops (N, crop, crop, 3) -> float32 embeddings: the resize identify's decoder
    does, then the exported network function."""
    embed = Network(config).embed_function(variables)
    size = int(config.data.image_size)

    def serve(crops):
        return embed(resize_like_pillow(crops, size))

    return serve


def _import_plugins() -> None:
    """Import jax2onnx's plugins for jax and flax only, and tell it that all are imported.
    Its own import_all_plugins also imports the equinox plugins, whose modules build and
    compile equinox models at import: 15 s of a 2-core CPU, for layers this project has
    none of."""
    from jax2onnx.plugins import plugin_system

    if plugin_system._already_imported_plugins:
        return
    root = Path(plugin_system.__file__).parent
    for package in ("jax", "flax"):
        plugin_system._import_tree(root / package, f"jax2onnx.plugins.{package}")
    plugin_system._already_imported_plugins = True


def _fix_avg_pool_plugin() -> None:
    """Register, through jax2onnx's plugin registry, its flax.linen.avg_pool plugin with
    flax's own signature. The shipped plugin (jax2onnx 0.13) patches ``nn.avg_pool`` with
    a function whose ``window_shape`` is keyword-only, so the ResNet's
    ``nn.avg_pool(x, (w, w), ...)`` fails while tracing; the lowering (ONNX AveragePool)
    is kept as it is."""
    from jax2onnx.plugins.flax.linen import avg_pool as linen_avg_pool
    from jax2onnx.plugins.plugin_system import register_primitive

    _import_plugins()  # first: a later import would register the shipped plugin again

    class PositionalAvgPool(linen_avg_pool.AvgPoolPlugin):
        @staticmethod
        def get_monkey_patch(orig_fn):
            keyword_only = linen_avg_pool.AvgPoolPlugin.get_monkey_patch(orig_fn)

            def avg_pool(inputs, window_shape, strides=None, padding="VALID",
                         count_include_pad=True):
                return keyword_only(inputs, window_shape=window_shape, strides=strides,
                                    padding=padding, count_include_pad=count_include_pad)

            return avg_pool

    register_primitive(jaxpr_primitive="linen.avg_pool")(PositionalAvgPool)


@contextlib.contextmanager
def _quiet_converter():
    """jax2onnx prints its plugins' debugging lines on stdout, warns with a traceback for
    each plugin of a library it does not support on this jax (dm_pix's, unused here), and
    onnx_ir warns per untyped shape constant: none of it is the user's concern."""
    loggers = [logging.getLogger(name) for name in ("jax2onnx", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def check_converter() -> None:
    """jax2onnx, onnx and onnxruntime are importable, or one line saying how to install
    them: found before any weights are read."""
    try:
        import jax2onnx  # noqa: F401
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ImportError(f"--format onnx needs jax2onnx, onnx and onnxruntime ({e}); "
                          f"{INSTALL}.") from None


def to_onnx_model(config, variables: Dict[str, Any]):
    """The serving function as an ``onnx.ModelProto`` (no metadata yet)."""
    check_converter()
    from jax2onnx import to_onnx

    crop = int(config.data.crop_size or config.data.image_size)
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"N, {crop}, {crop}, 3"), jnp.uint8)
    with _quiet_converter():
        _fix_avg_pool_plugin()
        model = to_onnx(serving_function(config, variables), [spec], model_name="bt_jax_embedder",
                        opset=OPSET, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
    # jax2onnx annotates some NCHW intermediates with their NHWC shapes; onnxruntime then
    # warns at every load. Intermediate shapes are optional, so none are kept.
    del model.graph.value_info[:]
    return model


def export_onnx(config, variables: Dict[str, Any], out_dir: str, *,
                overwrite: bool = False) -> str:
    """Write ``out_dir/embedder.onnx`` with its settings in the metadata; return ``out_dir``.
    ``out_dir`` is checked and replaced as ``export.export_embedder`` does."""
    export.check_out_dir(out_dir, overwrite)
    model = to_onnx_model(config, variables)
    info = {"format": "onnx", "format_version": ONNX_FORMAT_VERSION, "inputs": INPUTS_NOTE,
            **embedding.preprocessing(config), "resize": RESIZE_NOTE,
            "feature_dim": int(model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value),
            "l2_normalized": False, "arch": config.model.arch,
            "freeze_until": config.model.get("freeze_until") or None,
            "fingerprint": embedding.fingerprint(config, variables),
            "jax_version": jax.__version__, "converter": f"jax2onnx {_jax2onnx_version()}",
            "opset": OPSET,
            # Ties the metadata to these weights: the loader refuses a changed graph.
            "weights_sha256": weights_digest(model)}
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info, sort_keys=True)
    export.write_files(out_dir, {ONNX_FILE: model.SerializeToString()})
    return out_dir


def _jax2onnx_version() -> str:
    from importlib import metadata

    return metadata.version("jax2onnx")
