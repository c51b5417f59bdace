"""Every convolution of a network, forward and backward, ours against PyTorch's.

The whole-step benchmark says how fast a step is; this says where the time goes. The
convolutions are read off the model itself (every ``nn.Conv`` call while it initialises,
with its input shape), grouped by shape, and each distinct one is timed as the step runs
it: the forward pass and both gradients (the input's, except for the first layer whose
input is the image) in one compiled program for ours, one autograd pass for PyTorch's.
Ours goes through ``bt_jax.models.ops.conv_general_dilated`` as the model does, so in
bfloat16 a 1x1 convolution is the f32-accumulated matrix product the step runs.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, List, NamedTuple, Tuple

import numpy as np


class Conv(NamedTuple):
    """One distinct convolution: NHWC input, (kh, kw), output channels, strides, pads."""

    shape: Tuple[int, int, int, int]
    kernel: Tuple[int, int]
    features: int
    strides: Tuple[int, int]
    pads: Tuple[Tuple[int, int], Tuple[int, int]]
    first: bool  # the network's first layer: its input is the image, so no input gradient

    @property
    def flops(self) -> float:
        """FLOPs of the forward pass, two per multiply-add."""
        n, h, w, c = self.shape
        oh, ow = _out_size(h, self.kernel[0], self.strides[0], self.pads[0]), _out_size(
            w, self.kernel[1], self.strides[1], self.pads[1])
        return 2.0 * n * oh * ow * self.kernel[0] * self.kernel[1] * c * self.features

    @property
    def step_flops(self) -> float:
        """Forward pass and both gradients, each as many FLOPs as the forward; the first
        layer has no input gradient."""
        return self.flops * (2 if self.first else 3)


def _out_size(size: int, k: int, s: int, pads: Tuple[int, int]) -> int:
    return (size + sum(pads) - k) // s + 1


def network_convs(model, input_shape: Tuple[int, ...], batch: int
                  ) -> List[Tuple[str, int, Conv]]:
    """[(first layer's name, how many layers share it, conv)] of ``model.embed`` on
    ``batch`` inputs of ``input_shape`` (``trunk.input_shape``: an image, or a frozen
    trunk's activations), in the network's order. ``first`` marks the first layer, which
    reads the input and so needs no input gradient (a frozen trunk's head has more layers
    that read it; they are timed with theirs)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from jax import lax

    seen: Dict[Conv, List[str]] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if isinstance(module, nn.Conv) and context.method_name == "__call__":
            x = args[0]
            kernel = tuple(module.kernel_size)
            strides = module.strides or 1
            strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
            pads = module.padding if not isinstance(module.padding, str) else \
                lax.padtype_to_pads(x.shape[1:3], kernel, strides, module.padding)
            conv = Conv(tuple(x.shape), kernel, module.features, strides,
                        tuple(tuple(p) for p in pads), first=not seen)
            seen.setdefault(conv, []).append("/".join(module.path))
        return next_fun(*args, **kwargs)

    inputs = jnp.zeros((batch,) + tuple(input_shape), jnp.float32)
    with nn.intercept_methods(record):
        jax.eval_shape(functools.partial(model.init, method=type(model).embed),
                       jax.random.PRNGKey(0), inputs)
    return [(names[0], len(names), conv) for conv, names in seen.items()]


def jax_runner(conv: Conv, dtype: str, seed: int = 0) -> Callable[[], float]:
    """Seconds of one forward + backward pass of ``conv`` as our model computes it."""
    import time

    import jax
    import jax.numpy as jnp

    from bt_jax.models import ops

    rng = np.random.default_rng(seed)
    kh, kw = conv.kernel
    x = jnp.asarray(rng.standard_normal(conv.shape, np.float32), dtype)
    w = jnp.asarray(rng.standard_normal((kh, kw, conv.shape[-1], conv.features), np.float32)
                    / math.sqrt(kh * kw * conv.shape[-1]), dtype)

    def forward(x, w):
        return ops.conv_general_dilated(x, w, conv.strides, conv.pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def both(x, w, g):
        y, vjp = jax.vjp(forward, x, w)
        dx, dw = vjp(g)
        return (y, dw) if conv.first else (y, dx, dw)

    g = jnp.ones(jax.eval_shape(forward, x, w).shape, dtype)
    compiled = jax.jit(both).lower(x, w, g).compile()

    def run() -> float:
        start = time.perf_counter()
        jax.block_until_ready(compiled(x, w, g))
        return time.perf_counter() - start

    return run


def torch_runner(conv: Conv, bf16: bool, threads: int = 0, seed: int = 0
                 ) -> Callable[[], float]:
    """Seconds of the same pass in PyTorch (NCHW, f32 weights; bf16 under CPU autocast as
    ``bt_jax.benchmark.torch_step`` runs its bf16 step)."""
    import time

    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    n, h, w_, c = conv.shape
    x = torch.randn(n, c, h, w_, generator=gen, requires_grad=not conv.first)
    kh, kw = conv.kernel
    weight = (torch.randn(conv.features, c, kh, kw, generator=gen)
              / math.sqrt(kh * kw * c)).requires_grad_(True)
    (top, bottom), (left, right) = conv.pads
    symmetric = top == bottom and left == right

    def forward():
        inp = x if symmetric else F.pad(x, (left, right, top, bottom))
        return F.conv2d(inp, weight, stride=conv.strides,
                        padding=(top, left) if symmetric else 0)

    def run() -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = forward()
        y.backward(torch.ones_like(y))
        x.grad = weight.grad = None
        return time.perf_counter() - start

    return run


RUNNERS = ("ours f32", "ours bf16", "PyTorch f32", "PyTorch bf16 autocast")


def make_runners(conv: Conv, names=RUNNERS, threads: int = 0) -> Dict[str, Callable[[], float]]:
    makers = {"ours f32": lambda: jax_runner(conv, "float32"),
              "ours bf16": lambda: jax_runner(conv, "bfloat16"),
              "PyTorch f32": lambda: torch_runner(conv, False, threads),
              "PyTorch bf16 autocast": lambda: torch_runner(conv, True, threads)}
    return {name: makers[name]() for name in names}


def measure_all(convs, rounds: int, names=RUNNERS, threads: int = 0,
                log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Median seconds of every runner on every distinct convolution, alternating the
    runners round by round (``measure.alternate``) within each convolution."""
    from bt_jax.benchmark import measure

    rows = []
    for name, count, conv in convs:
        log(f"[conv] {name} x{count}: {conv.shape} {conv.kernel} -> {conv.features}, "
            f"stride {conv.strides}")
        times = measure.alternate(make_runners(conv, names, threads), rounds, warmup=2)
        rows.append({"name": name, "count": count, **conv._asdict(),
                     "gflop": conv.step_flops / 1e9,
                     "median_s": {k: float(np.median(v)) for k, v in times.items()}})
    return rows


def run(recipe: str, arch: str, image_size: int, batch: int, rounds: int, names=RUNNERS,
        threads: int = 0, log: Callable[[str], None] = print):
    """(rows with per-step times, a header naming the command, CPU and XLA flags) for
    every convolution of ``configs/<recipe>.py``'s network ('' arch / 0 size: the
    recipe's), at ``batch`` inputs per call."""
    import os

    from bt_jax.network import embedding, trunk
    from bt_jax.benchmark import cases, plan

    config = cases.recipe_config(recipe)
    config.model.dtype = "float32"  # the layer list; each runner sets its own dtype
    config.model.arch = arch or config.model.arch
    size = config.data.image_size = image_size or config.data.image_size
    layers = network_convs(embedding.create_model(config), trunk.input_shape(config), batch)
    rows = measure_all(layers, rounds, names, threads, log)
    per_step(rows)
    header = (f"`python scripts/benchmark_convs.py --recipe {recipe} --arch "
              f"{config.model.arch} --image_size {size} --batch {batch} --rounds {rounds}`. "
              f"CPU: {plan._cpu_model()}, {os.cpu_count()} cores ({plan._cpu_flags()}); "
              f"XLA_FLAGS='{os.environ.get('XLA_FLAGS', '')}'; load average "
              f"{os.getloadavg()[0]:.1f} at the end. Medians of {rounds} alternating passes, "
              "each layer's forward and backward, x2 views x layers of that shape per step.")
    return rows, header


def _ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f}"


def _ratio(rows, a: str, b: str) -> str:
    top = sum(r["per_step_s"].get(a, 0.0) for r in rows)
    bottom = sum(r["per_step_s"].get(b, 0.0) for r in rows)
    return f"{top / bottom:.2f}" if top and bottom else "n/a"


def per_step(rows, views: int = 2) -> None:
    """Adds ``per_step_s``: a runner's seconds for every layer of that shape in one step
    (each view's forward and backward passes run separately, as in the train step)."""
    for r in rows:
        r["per_step_s"] = {k: v * r["count"] * views for k, v in r["median_s"].items()}


def markdown(rows, names, header: str) -> str:
    """The per-layer table, then subtotals for 1x1 and larger windows and the total."""
    lines = [header, "", "| layer (x layers of that shape) | input | window / stride | "
             "GFLOP per step | " + " | ".join(f"{n} ms per step" for n in names)
             + " | ours bf16 / PyTorch bf16 | ours f32 / PyTorch f32 |",
             "|---|---|---|---|" + "---|" * len(names) + "---|---|"]
    for r in rows:
        k, s = r["kernel"], r["strides"]
        lines.append(
            f"| {r['name']} (x{r['count']}) | {'x'.join(map(str, r['shape']))} | "
            f"{k[0]}x{k[1]} / {s[0]} | {2 * r['gflop'] * r['count']:.2f} | "
            + " | ".join(_ms(r["per_step_s"][n]) for n in names)
            + f" | {_ratio([r], 'ours bf16', 'PyTorch bf16 autocast')} | "
            f"{_ratio([r], 'ours f32', 'PyTorch f32')} |")
    groups = (("1x1 convolutions", [r for r in rows if tuple(r["kernel"]) == (1, 1)]),
              ("larger windows", [r for r in rows if tuple(r["kernel"]) != (1, 1)]),
              ("all convolutions", rows))
    for label, group in groups:
        gflop = sum(2 * r["gflop"] * r["count"] for r in group)
        lines.append(f"| **{label}** | | | {gflop:.2f} | " + " | ".join(
            f"**{_ms(sum(r['per_step_s'][n] for r in group))}**" for n in names)
            + f" | **{_ratio(group, 'ours bf16', 'PyTorch bf16 autocast')}** | "
            f"**{_ratio(group, 'ours f32', 'PyTorch f32')}** |")
    return "\n".join(lines)
