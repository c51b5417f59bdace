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
