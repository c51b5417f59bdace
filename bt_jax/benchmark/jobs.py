"""The measurements, each run as its own process: ``python -m bt_jax.benchmark.jobs SPEC``.

XLA reads XLA_FLAGS (simulated devices, CPU fusion options) once, when jax starts, so
every flag setting needs a fresh process; separate processes also give each job its own
peak memory figure and hand all memory back between jobs. A job reads a JSON spec and
prints its JSON result as the last line of stdout; progress goes to stderr.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict

from bt_jax.benchmark import measure
from bt_jax.benchmark.cases import Case


def job_env(fast_cpu: bool, devices: int = 1, extra_flags: str = "",
            base: Dict[str, str] | None = None, malloc: str = "") -> Dict[str, str]:
    """The environment of a job process, its XLA flags set here and nowhere else.

    The entry points now turn XLA's fast CPU path on by themselves (bt_jax/runtime/devices.py) and
    a shell may carry any XLA_FLAGS; a benchmark that inherited them would not know which
    path it measured. So every job gets exactly: its simulated device count, the fast CPU
    flag if ``fast_cpu``, the run's ``extra_flags``, and BT_JAX_FAST_CPU to match. The
    same goes for the allocator: ``malloc`` (a library to preload, '' for the C library's
    own) replaces whatever tcmalloc the shell preloads, and BT_JAX_TCMALLOC matches it.
    """
    from bt_jax.runtime.devices import FAST_CPU_ENV, FAST_CPU_FLAG, MALLOC_ENV
    env = dict(os.environ if base is None else base)
    preload = [lib for lib in env.get("LD_PRELOAD", "").split() if "tcmalloc" not in lib]
    env["LD_PRELOAD"] = " ".join(([malloc] if malloc else []) + preload)
    if not env["LD_PRELOAD"]:
        del env["LD_PRELOAD"]
    env[MALLOC_ENV] = "1" if malloc else "0"
    flags = [f"--xla_force_host_platform_device_count={devices}"] if devices > 1 else []
    flags += ([FAST_CPU_FLAG] if fast_cpu else []) + extra_flags.split()
    env["XLA_FLAGS"] = " ".join(flags)
    env[FAST_CPU_ENV] = "1" if fast_cpu else "0"
    return env


def job_flags(fast_cpu: bool, extra_flags: str = "") -> str:
    """The XLA flags a job runs with, less the device count (what the JSON records)."""
    return job_env(fast_cpu, 1, extra_flags, base={})["XLA_FLAGS"]


def run_job(spec: Dict[str, Any], *, fast_cpu: bool = False, devices: int = 1,
            extra_flags: str = "", timeout_s: float = 3600, malloc: str = "") -> Dict[str, Any]:
    """Run one job in a fresh process; its result, or {'error': ...} if it failed."""
    spec = {**spec, "fast_cpu": fast_cpu, "xla_flags": job_flags(fast_cpu, extra_flags)}
    measure.log(f"[job] {spec['kind']} {spec.get('label', '')} XLA_FLAGS='{spec['xla_flags']}' "
                f"malloc={malloc or 'C library'}")
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "bt_jax.benchmark.jobs", json.dumps(spec)],
                              env=job_env(fast_cpu, devices, extra_flags, malloc=malloc),
                              stdout=subprocess.PIPE, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"spec": spec, "error": f"timed out after {timeout_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        # -9 is the kernel's OOM killer on a full machine: say so rather than a bare code.
        why = "killed (out of memory?)" if done.returncode == -9 else f"exit {done.returncode}"
        return {"spec": spec, "error": why}
    return {"spec": spec, "wall_s": time.perf_counter() - start, **json.loads(lines[-1])}


# ----------------------------------------------------------------------------------------
# Inside the job process.


def _case(spec) -> Case:
    return Case(**spec["case"])


def throughput(spec) -> Dict[str, Any]:
    """Our step's variants and the PyTorch step, alternated on one batch and size."""
    from bt_jax.benchmark.jax_step import JaxStep, Variant
    case, runners, out = _case(spec), {}, {"compile_s": {}, "xla_flops": {}, "loss": {}}
    host = None
    for v in spec.get("jax", []):
        measure.log(f"  compiling {v['name']} ...")
        step = JaxStep(case.with_(dtype=v["dtype"]), Variant(v["donate"], v["fused"]),
                       host_state=host)
        host = step.host_state
        runners[v["name"]] = step
        out["compile_s"][v["name"]] = step.compile_s
        out["xla_flops"][v["name"]] = step.flops
    for step in runners.values():
        step.host_state = None  # each variant holds its device copy; free the host one
    host = None
    torch_runners = _torch_runners(spec, case, out)
    runners.update(torch_runners)
    limits = {t["name"]: t["rounds"] for t in spec.get("torch", []) if t.get("rounds")}
    _time(runners, spec, case, out, limits)
    out["loss"] = {name: r.loss for name, r in runners.items()}
    out["peaks"] = _peaks(spec, bool(torch_runners))
    out["rss_mb"] = measure.peak_rss_mb()
    return out


def _time(runners, spec, case, out, limits=None) -> None:
    """Alternate ``runners`` for the spec's rounds; their times and summaries into ``out``."""
    times = measure.alternate(runners, spec["rounds"], spec.get("warmup", 1), limits)
    out["times"] = times
    out["summary"] = {name: measure.summary(t) for name, t in times.items()}
    out["images_per_step"] = 2 * case.batch


def _torch_runners(spec, case, out) -> Dict[str, Any]:
    if not spec.get("torch"):
        return {}
    from bt_jax.benchmark.torch_step import TorchStep
    runners = {}
    for t in spec["torch"]:
        runners[t["name"]] = TorchStep(case, bf16=t["bf16"], threads=spec.get("threads", 0),
                                       device=spec.get("torch_device", "cpu"),
                                       channels_last=t.get("channels_last"))
    if spec.get("torch_flops"):
        out["torch_flops"] = next(iter(runners.values())).count_flops()
    return runners


def _peaks(spec, with_torch: bool) -> Dict[str, float]:
    """Matmul FLOP/s in the job's own process and flags: the 'hardware limit' of MFU."""
    n, peaks = spec.get("peak_n", 2048), {}
    for dtype in spec.get("peak_dtypes", ["float32"]):
        peaks[f"jax {dtype}"] = measure.jax_matmul_peak(n, dtype, repeats=3)
        if with_torch:
            peaks[f"torch {dtype}"] = measure.torch_matmul_peak(
                n, dtype, repeats=3, device=spec.get("torch_device", "cpu"))
    return peaks


def scaling(spec) -> Dict[str, Any]:
    """The same global batch over 1, 2, 4, 8 simulated devices."""
    from bt_jax.benchmark.jax_step import JaxStep
    case, runners, out = _case(spec), {}, {"compile_s": {}, "xla_flops": {}}
    host = None
    for n in spec["devices"]:
        measure.log(f"  compiling the step on {n} device(s) ...")
        # The exact reducer keeps no per-device state, so one host state serves every n.
        runners[f"{n} dev"] = JaxStep(case.with_(num_devices=n), host_state=host)
        host = runners[f"{n} dev"].host_state
    for name, step in runners.items():
        step.host_state = None
        out["compile_s"][name], out["xla_flops"][name] = step.compile_s, step.flops
    _time(runners, spec, case, out)
    out["rss_mb"] = measure.peak_rss_mb()
    return out


def powersgd(spec) -> Dict[str, Any]:
    """The exact all-reduce and PowerSGD on the same model, devices, batch and weights,
    alternated step by step."""
    from bt_jax.benchmark.jax_step import JaxStep
    case, runners, out = _case(spec), {}, {"compile_s": {}, "xla_flops": {}, "rss_mb_after": {}}
    reducers = {"exact": {}, f"PowerSGD r{spec['rank']}": {"reducer": "powersgd",
                                                            "rank": spec["rank"]}}
    for name, changes in reducers.items():
        measure.log(f"  compiling the {name} step on {case.num_devices} devices ...")
        step = JaxStep(case.with_(**changes))
        # At 82 M parameters the host copy (with PowerSGD, one error buffer per device)
        # is gigabytes that the timed steps never read.
        step.host_state = None
        runners[name] = step
        out["compile_s"][name], out["xla_flops"][name] = step.compile_s, step.flops
        out["rss_mb_after"][name] = measure.peak_rss_mb()
    _time(runners, spec, case, out)
    out["loss"] = {name: r.loss for name, r in runners.items()}
    out["rss_mb"] = measure.peak_rss_mb()
    return out


def comm(spec) -> Dict[str, Any]:
    """Floats one device sends per step, exact and PowerSGD, for the case's model (shapes
    only: nothing is allocated)."""
    import jax
    import jax.numpy as jnp

    from bt_jax.network import embedding
    from bt_jax.train.powersgd import compression_stats
    config = _case(spec).config()
    size = config.data.image_size
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    init = functools.partial(embedding.create_model(config).init, train=False)
    params = jax.eval_shape(init, jax.random.PRNGKey(0), x, x)["params"]
    out = {"params": None, "powersgd": {}}
    for rank in spec["ranks"]:
        stats = compression_stats(params, rank=rank, min_compression_rate=(
            config.reducer.powersgd.min_compression_rate))
        out["params"] = stats["exact_floats"]
        out["powersgd"][str(rank)] = stats["powersgd_floats"]
    return out


def data_dir(given: str = "") -> str:
    """``given``, or MLFW next to the checkout (``<repo>/../shared/data/mlfw``), where the
    tests find it."""
    if given:
        return given
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.path.join(os.path.dirname(repo), "shared", "data", "mlfw")


def pipeline(spec) -> Dict[str, Any]:
    """Images per second out of the grain input pipeline alone (read, decode, resize,
    batch) on the MLFW training folder, per image size."""
    import warnings

    from bt_jax.data import sources
    from bt_jax.data.pipeline import StreamingPairs
    out, data = {}, data_dir(spec["data"])
    for size in spec["sizes"]:
        config = Case(image_size=size, pool_window=1).config()  # only its data fields matter
        config.data.train_dir = os.path.join(data, "train")
        config.data.val_dir = os.path.join(data, "val")
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as workdir:
            warnings.simplefilter("ignore")  # identities with a single image
            source = sources.open_split(config, "train", workdir)
        stream = StreamingPairs(source, size, seed=0, pair_sampler="all_pairs",
                                workers=spec["workers"])
        rate = measure.pipeline_rate(stream, spec["batch"], spec["batches"])
        out[str(size)] = {"images_per_s": rate, "threads": stream.workers}
        measure.log(f"  pipeline at {size} px: {rate:.0f} images/s ({stream.workers} threads)")
    out["rss_mb"] = measure.peak_rss_mb()
    return out


JOBS = {"throughput": throughput, "scaling": scaling, "powersgd": powersgd, "comm": comm,
        "pipeline": pipeline}


def main(argv) -> None:
    spec = json.loads(argv[1])
    load_start = os.getloadavg()[0]
    result = JOBS[spec["kind"]](spec)
    # Other jobs on a shared machine slow every runner, PyTorch's OpenMP barriers most.
    result["load_avg"] = [load_start, os.getloadavg()[0]]
    import jax
    result.update(backend=jax.default_backend(), device=str(jax.devices()[0].device_kind),
                  cpu_count=os.cpu_count())
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
