"""Simulated CPU devices. Import and call before anything imports jax."""

import os
import sys


def simulate_cpu_devices(count: int) -> None:
    """Ask XLA's CPU platform for ``count`` devices (ignored by GPU/TPU backends).

    Raises if jax is already imported, since XLA reads the flag only once.
    """
    flag = f"--xla_force_host_platform_device_count={count}"
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" in flags:
        return
    if "jax" in sys.modules:
        raise RuntimeError("simulate_cpu_devices() must run before jax is imported")
    os.environ["XLA_FLAGS"] = f"{flags} {flag}".strip()


# XLA's CPU path that fuses convolutions through YNNPACK: measured 1.16-1.35x faster
# ResNet-50 Barlow Twins steps on an AMD EPYC and 1.19x on an Intel Xeon (docs/benchmarks.md).
# Experimental in XLA, so it is probed before use: an unknown flag aborts jax at start-up.
FAST_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
FAST_CPU_ENV = "BT_JAX_FAST_CPU"  # '0' keeps XLA's default CPU path
FAST_CPU_OFF_ARGS = ("--nofast_cpu", "--fast_cpu=false", "--fast_cpu=False", "--fast_cpu=0")
_PROBE = "import jax.numpy as jnp; jnp.ones((2, 4, 4, 1)).sum().block_until_ready()"


def choose_cpu_flags(env, argv) -> tuple:
    """(XLA_FLAGS to use, a message for the log or None) for ``env`` and the command line.

    The fast CPU flag is added unless the user set a value for it, turned it off
    (BT_JAX_FAST_CPU=0 or --nofast_cpu), or XLA rejects it in a probe process.
    """
    import subprocess

    flags = env.get("XLA_FLAGS", "")
    name = FAST_CPU_FLAG.split("=")[0]
    if name in flags:
        return flags, None
    if env.get(FAST_CPU_ENV, "1") == "0" or any(a in FAST_CPU_OFF_ARGS for a in argv):
        return flags, None
    trial = f"{flags} {FAST_CPU_FLAG}".strip()
    probe = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                           env={**env, "XLA_FLAGS": trial, "JAX_PLATFORMS": "cpu"},
                           timeout=300)
    if probe.returncode != 0:
        return flags, (f"bt_jax: XLA rejected {FAST_CPU_FLAG}; running XLA's default CPU "
                       "path.")
    return trial, (f"bt_jax: faster CPU convolutions on ({FAST_CPU_FLAG}); "
                   f"{FAST_CPU_ENV}=0 or --nofast_cpu turns them off.")


def fast_cpu(argv=None) -> None:
    """Apply ``choose_cpu_flags`` to this process (and the processes it starts) and say so
    once on stderr. Call before anything imports jax."""
    if "jax" in sys.modules:
        raise RuntimeError("fast_cpu() must run before jax is imported")
    flags, message = choose_cpu_flags(dict(os.environ), sys.argv if argv is None else argv)
    os.environ["XLA_FLAGS"] = flags
    if message:
        print(message, file=sys.stderr, flush=True)


def set_up_cpu(devices: int = 8) -> None:
    """What every entry point does first: ``devices`` simulated CPU devices, the fast CPU
    path. Both only affect the CPU platform."""
    simulate_cpu_devices(devices)
    fast_cpu()
