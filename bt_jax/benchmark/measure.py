"""Timing on a shared machine: alternation, medians, matmul peak and peak host memory."""

from __future__ import annotations

import resource
import statistics
import sys
import time
from typing import Callable, Dict, List


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pipeline_rate(stream, batch: int, batches: int) -> float:
    """Images per second out of an input pipeline alone (``StreamingPairs``: read, decode,
    resize, batch), after one warm-up batch that starts its worker threads."""
    feed = stream.batches(0, batch)
    next(feed)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        images += 2 * next(feed).shape[2]
    return images / (time.perf_counter() - start)


def rotation(names: List[str], round_index: int) -> List[str]:
    """The order of ``names`` in round ``round_index``: rotated by one each round and
    reversed every other round, so that no runner always follows the same one."""
    shift = round_index % len(names)
    order = names[shift:] + names[:shift]
    return order[::-1] if round_index % 2 else order


def alternate(runners: Dict[str, Callable[[], float]], rounds: int, warmup: int = 1,
              limits: Dict[str, int] | None = None) -> Dict[str, List[float]]:
    """Seconds per call of every runner, interleaved round by round.

    Other jobs on a shared machine come and go; interleaving spreads them over all
    runners, so the ratios of the medians stay meaningful when single steps do not.
    ``limits`` caps the rounds of a very slow runner (it joins the first rounds only).
    """
    limits = limits or {}
    for name, run in runners.items():
        for _ in range(warmup):
            run()
    names, times = list(runners), {name: [] for name in runners}
    for r in range(rounds):
        for name in rotation(names, r):
            if r < limits.get(name, rounds):
                times[name].append(runners[name]())
        log(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {t[-1]:.3f}s" for name, t in times.items() if t))
    return times


def summary(times: List[float]) -> Dict[str, float]:
    """Median, quartiles and extremes of a list of step times (seconds)."""
    q = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return {"median_s": statistics.median(times), "q1_s": q[0], "q3_s": q[2],
            "min_s": min(times), "max_s": max(times), "n": len(times)}


def median_pass(fn: Callable[[], object], rounds: int, warm: bool = True) -> float:
    """Median seconds of ``rounds`` calls of ``fn``, after an untimed one with ``warm``
    (which compiles whatever ``fn`` jits)."""
    if warm:
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_rate(run: Callable[[], None], flops: float, repeats: int) -> float:
    """FLOP/s of the fastest of ``repeats`` calls after one warm-up: a peak is what the
    machine can do, and on a shared machine the fastest call is the least disturbed."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return flops / best


def jax_matmul_peak(n: int, dtype: str, repeats: int = 5) -> float:
    """FLOP/s of an n x n x n matmul through XLA on the default device."""
    import jax
    import jax.numpy as jnp
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(k2, (n, n), jnp.dtype(dtype))
    matmul = jax.jit(jnp.matmul)
    return best_rate(lambda: matmul(a, b).block_until_ready(), 2.0 * n ** 3, repeats)


def torch_matmul_peak(n: int, dtype: str, repeats: int = 5, device: str = "cpu") -> float:
    """FLOP/s of an n x n x n matmul through PyTorch."""
    import torch
    a, b = (torch.randn(n, n, dtype=getattr(torch, dtype), device=device) for _ in range(2))

    def run():
        a @ b
        if device != "cpu":
            torch.cuda.synchronize()
    return best_rate(run, 2.0 * n ** 3, repeats)
