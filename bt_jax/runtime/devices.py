"""What the entry points set up before jax starts: tcmalloc, simulated CPU devices, the
fast CPU path. Import and call before anything imports jax."""

import os
import sys
from typing import Callable, Optional


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


def _off_args(name: str) -> tuple:
    """The ways absl spells a bool flag ``name`` as off, read before flags are parsed."""
    return (f"--no{name}", f"--{name}=false", f"--{name}=False", f"--{name}=0")


FAST_CPU_OFF_ARGS = _off_args("fast_cpu")
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


# glibc's malloc serves every buffer over 32 MB with a fresh mmap and unmaps it on free,
# so each step pays a page fault per 4 KB of every large buffer XLA allocates (about 1 us
# each: 40 ms per 128 MB). tcmalloc keeps freed memory for the next step: our ResNet-50
# step at 112 px ran 1.94x faster with it, PyTorch's 3.1x (docs/benchmarks.md). It is a
# C library, not a Python package, so it is used where the system has it and the process
# is re-executed with it preloaded (a malloc cannot be swapped in a running process).
MALLOC_ENV = "BT_JAX_TCMALLOC"  # '0' keeps the C library's malloc
MALLOC_OFF_ARGS = _off_args("tcmalloc")
MALLOC_LIBS = ("tcmalloc_minimal", "tcmalloc")  # gperftools' sonames, lightest first
MALLOC_INSTALL = "apt install libtcmalloc-minimal4 (Debian, Ubuntu) or conda install gperftools"
_REEXECUTED = "BT_JAX_TCMALLOC_PRELOADED"  # set across our own re-exec, so it runs once


def find_tcmalloc() -> Optional[str]:
    """The tcmalloc shared library's name as the dynamic loader finds it, or None."""
    import ctypes.util

    for name in MALLOC_LIBS:
        found = ctypes.util.find_library(name)
        if found:
            return found
    return None


def choose_malloc(env, argv, platform: str = sys.platform,
                  find: Callable[[], Optional[str]] = find_tcmalloc) -> tuple:
    """(library to preload or None, a message for the log or None).

    Preloads tcmalloc on Linux unless the user turned it off (BT_JAX_TCMALLOC=0 or
    --notcmalloc), already preloads an allocator, or this process is our own re-exec.
    """
    preload = env.get("LD_PRELOAD", "")
    if (not platform.startswith("linux") or env.get(MALLOC_ENV, "1") == "0"
            or any(a in MALLOC_OFF_ARGS for a in argv) or _REEXECUTED in env
            or any(name in preload for name in ("tcmalloc", "jemalloc", "mimalloc"))):
        return None, None
    library = find()
    if library is None:
        return None, ("bt_jax: tcmalloc not found, so large buffers are page-faulted "
                      f"afresh every step; {MALLOC_INSTALL} makes CPU steps faster "
                      f"(docs/benchmarks.md). {MALLOC_ENV}=0 silences this.")
    return library, None


def loaded_libraries() -> str:
    """This process's memory map (Linux), to check what the loader really preloaded."""
    try:
        with open("/proc/self/maps") as f:
            return f.read()
    except OSError:
        return ""


def preload_tcmalloc(argv=None) -> None:
    """Re-execute this process with tcmalloc preloaded when ``choose_malloc`` says so, and
    say once on stderr what was done. Call before anything imports jax or starts threads:
    nothing before this point survives the re-exec."""
    if "jax" in sys.modules:
        raise RuntimeError("preload_tcmalloc() must run before jax is imported")
    if os.environ.pop(_REEXECUTED, None) is not None:
        ok = "tcmalloc" in loaded_libraries()
        print(f"bt_jax: tcmalloc {'preloaded' if ok else 'could not be preloaded'} "
              f"(LD_PRELOAD={os.environ.get('LD_PRELOAD', '')}); {MALLOC_ENV}=0 or "
              "--notcmalloc keeps the C library's malloc.", file=sys.stderr, flush=True)
        return
    library, message = choose_malloc(os.environ, sys.argv if argv is None else argv)
    if message:
        print(message, file=sys.stderr, flush=True)
    if library is None:
        return
    env = {**os.environ, _REEXECUTED: "1",
           "LD_PRELOAD": f"{library} {os.environ.get('LD_PRELOAD', '')}".strip()}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def define_set_up_flags() -> None:
    """Declare --fast_cpu and --tcmalloc for an absl entry point. ``set_up_cpu`` reads them
    from the command line before absl parses it; declaring them lets absl accept them."""
    from absl import flags

    flags.DEFINE_bool("fast_cpu", True, "XLA's faster CPU convolutions (read before jax "
                      f"starts; {FAST_CPU_ENV}=0 does the same as --nofast_cpu).")
    flags.DEFINE_bool("tcmalloc", True, "Preload tcmalloc where the system has it (read "
                      f"before anything starts; {MALLOC_ENV}=0 does the same as --notcmalloc).")


def set_up_cpu(devices: int = 8, *, uses_jax: bool = True) -> None:
    """What every entry point does first: tcmalloc where the system has one (re-executing
    the process), ``devices`` simulated CPU devices, the fast CPU path. The last two only
    affect the CPU platform. With ``uses_jax=False`` (a command that will not run jax,
    such as a query served by onnxruntime) only tcmalloc is set up: the fast path's probe
    would start jax in a child process for nothing."""
    preload_tcmalloc()
    if not uses_jax:
        return
    simulate_cpu_devices(devices)
    fast_cpu()
