"""Which jobs a benchmark run starts, in which order and with which XLA flags.

Levers are measured in full at the first image size only (every variant is a
compilation of about a minute on this CPU); the other sizes measure the plain step and
the fastest combination found there, next to PyTorch. Every throughput job alternates
its runners, so each ratio to PyTorch comes from steps taken side by side.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Any, Dict, List, Optional, Tuple

from bt_jax.benchmark import comm, jobs
from bt_jax.benchmark.report import OURS_PLAIN, TORCH_F32, ok_jobs, step_rows

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
LEVERS = ("bf16", "fused", "ynn", "nodonate")


@dataclasses.dataclass
class Options:
    sections: Tuple[str, ...] = ("throughput", "scaling", "powersgd", "pipeline")
    sizes: Tuple[int, ...] = (112, 244)
    batches: Tuple[int, ...] = (4, 2)  # pairs per step, one per size
    projector: str = "2048-4096-8192"
    arch: str = "resnet50"  # 'tiny' for smoke tests
    rounds: int = 10
    levers: Tuple[str, ...] = ("bf16", "fused", "ynn")  # 'nodonate': one more compile
    torch_bf16_rounds: int = 1  # PyTorch bf16 autocast: very slow without AVX-512 BF16
    threads: int = 0  # PyTorch threads; 0 = the cores XLA uses
    platform: str = "cpu"  # 'gpu': one device, no CPU flag variants, PyTorch on CUDA
    scaling_size: int = 64
    scaling_batch: int = 8
    scaling_projector: str = "512-512"
    scaling_devices: Tuple[int, ...] = (1, 2, 4, 8)
    scaling_rounds: int = 4
    powersgd_ranks: Tuple[int, ...] = (1, 2, 4)
    powersgd_step_rank: int = 4  # the rank whose step is timed; 0 = none
    data_dir: str = ""
    pipeline_batch: int = 64
    pipeline_batches: int = 5
    pipeline_workers: int = 0
    job_timeout_s: float = 3600
    gpu_result: Optional[Dict[str, Any]] = None  # a gpu_bench.sh JSON for the 8-GPU model


def _ours(name: str, dtype: str, *, fused: bool = False, donate: bool = True) -> Dict[str, Any]:
    return {"name": name, "dtype": dtype, "fused": fused, "donate": donate}


def lever_variants(levers) -> Dict[str, List[Dict[str, Any]]]:
    """{XLA flags: our runners} for the first size: each lever alone, plus bf16 with each."""
    default = [_ours(OURS_PLAIN, "float32")]
    if "bf16" in levers:
        default.append(_ours("ours bf16", "bfloat16"))
    if "fused" in levers:
        default.append(_ours("ours f32 2B", "float32", fused=True))
    if "nodonate" in levers:
        default.append(_ours("ours f32 no-donate", "float32", donate=False))
    variants = {"": default}
    if "ynn" in levers:
        variants[YNN_FLAG] = [_ours(OURS_PLAIN, "float32")] + (
            [_ours("ours bf16", "bfloat16")] if "bf16" in levers else [])
    return variants


def _torch(options: Options, first: bool) -> List[Dict[str, Any]]:
    """PyTorch f32 (NCHW) everywhere; in the first job also channels_last, oneDNN's other
    layout (the faster one is the baseline there), and bf16 autocast, which without
    AVX-512 BF16 is many times slower and so gets few rounds."""
    if options.arch != "resnet50":
        return []  # the PyTorch side mirrors ResNet-50 only
    runners = [{"name": TORCH_F32, "bf16": False, "channels_last": False}]
    if first:
        runners.append({"name": TORCH_F32 + " channels_last", "bf16": False,
                        "channels_last": True})
    if first and options.torch_bf16_rounds:
        runners.append({"name": "PyTorch bf16 autocast", "bf16": True,
                        "rounds": options.torch_bf16_rounds})
    return runners


def _throughput_spec(options: Options, size: int, batch: int, ours, torch_runners, label):
    gpu = options.platform == "gpu"
    return {"kind": "throughput", "label": label,
            "case": {"image_size": size, "batch": batch, "projector": options.projector,
                     "arch": options.arch},
            "jax": ours, "torch": torch_runners, "rounds": options.rounds,
            "threads": options.threads or (0 if gpu else os.cpu_count()),
            "torch_device": "cuda" if gpu else "cpu", "torch_flops": True,
            "peak_n": 8192 if gpu else 2048,
            "peak_dtypes": ["bfloat16"] if gpu else ["float32"],
            "peak_for_mfu": "bfloat16" if gpu else "float32"}


def best_variant(results) -> Tuple[str, Dict[str, Any]]:
    """(XLA flags, runner) of our runner with the lowest median step time in ``results``.

    Judged on our own times, not on ratios to PyTorch: PyTorch's two OpenMP threads slow
    down several-fold as soon as another job takes a core, so a ratio taken in a busier
    process flatters whatever ran there.
    """
    best = None
    for job in ok_jobs(results):
        by_name = {v["name"]: v for v in job["spec"]["jax"]}
        for name, stats in job["summary"].items():
            if name in by_name and (best is None or stats["median_s"] < best[0]):
                best = (stats["median_s"], job["spec"]["xla_flags"], by_name[name])
    return (best[1], best[2]) if best else ("", _ours(OURS_PLAIN, "float32"))


def run_throughput(options: Options) -> List[Dict[str, Any]]:
    if options.platform == "gpu":
        return _run_gpu_throughput(options)
    first, results = options.sizes[0], []
    for flags, ours in lever_variants(options.levers).items():
        spec = _throughput_spec(options, first, options.batches[0], ours,
                                _torch(options, not flags),
                                f"{first}px levers" + (", XLA flags" if flags else ""))
        results.append(jobs.run_job(spec, xla_flags=flags, timeout_s=options.job_timeout_s))
    flags, best = best_variant(results)
    for size, batch in zip(options.sizes[1:], options.batches[1:]):
        for job_flags, ours in _other_size_jobs(flags, best).items():
            label = f"{size}px" + (f", best flags of {first}px" if job_flags else "")
            spec = _throughput_spec(options, size, batch, ours, _torch(options, False), label)
            results.append(jobs.run_job(spec, xla_flags=job_flags, timeout_s=options.job_timeout_s))
    return results


def _other_size_jobs(flags: str, best: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    """{XLA flags: our runners} at the other sizes: plain f32 with default flags always
    (the headline against PyTorch), the first size's best variant beside it."""
    plain = _ours(OURS_PLAIN, "float32")
    if not flags:
        return {"": [plain] + ([best] if best["name"] != OURS_PLAIN else [])}
    return {"": [plain], flags: [best]}


def _run_gpu_throughput(options: Options) -> List[Dict[str, Any]]:
    """bf16 on one GPU: our step alone at a batch that fills the card (halved once if it
    does not fit), then side by side with PyTorch bf16 autocast at half that batch (the
    two frameworks share the card's memory in one process)."""
    results, torch_bf16 = [], [{"name": "PyTorch bf16 autocast", "bf16": True}]
    for size, batch in zip(options.sizes, options.batches):
        ours = [_ours("ours bf16", "bfloat16")]
        alone = jobs.run_job(_throughput_spec(options, size, batch, ours, [], f"{size}px alone"),
                             timeout_s=options.job_timeout_s)
        if "error" in alone and "timed out" not in alone["error"] and batch > 1:
            batch //= 2
            alone = jobs.run_job(_throughput_spec(options, size, batch, ours, [],
                                                  f"{size}px alone"), timeout_s=options.job_timeout_s)
        spec = _throughput_spec(options, size, max(1, batch // 2), ours, torch_bf16,
                                f"{size}px with PyTorch")
        spec["baseline"] = torch_bf16[0]["name"]
        results += [alone, jobs.run_job(spec, timeout_s=options.job_timeout_s)]
    return results


def run_scaling(options: Options) -> Dict[str, Any]:
    spec = {"kind": "scaling", "label": f"{options.scaling_size}px",
            "case": {"image_size": options.scaling_size, "batch": options.scaling_batch,
                     "projector": options.scaling_projector, "arch": options.arch},
            "devices": list(options.scaling_devices), "rounds": options.scaling_rounds,
            "powersgd_ranks": [options.powersgd_step_rank] if options.powersgd_step_rank else []}
    return jobs.run_job(spec, devices=max(options.scaling_devices))


def run_comm(options: Options) -> Dict[str, Any]:
    spec = {"kind": "comm", "label": "244px model",
            "case": {"image_size": 244, "projector": options.projector},
            "ranks": list(options.powersgd_ranks)}
    return jobs.run_job(spec)


def run_pipeline(options: Options) -> Dict[str, Any]:
    # The spec (kept in the JSON) names the folder as given; '' is the default beside the repo.
    if not os.path.isdir(os.path.join(jobs.data_dir(options.data_dir), "train")):
        return {"spec": {"kind": "pipeline"},
                "error": f"no training folder under {jobs.data_dir(options.data_dir)}"}
    spec = {"kind": "pipeline", "label": "MLFW train folder", "sizes": list(options.sizes),
            "data": options.data_dir, "batch": options.pipeline_batch,
            "batches": options.pipeline_batches, "workers": options.pipeline_workers}
    return jobs.run_job(spec)


def _flops_per_image_244(throughput) -> Tuple[Optional[float], str]:
    """Our step's FLOPs per image at 244 px: measured if a 244 job ran, else scaled."""
    ok = [j for j in ok_jobs(throughput) if j.get("xla_flops")]
    for job in ok:
        if job["spec"]["case"]["image_size"] == 244:
            return next(iter(job["xla_flops"].values())) / job["images_per_step"], "XLA, 244 px"
    if ok:
        job, size = ok[0], ok[0]["spec"]["case"]["image_size"]
        per_image = next(iter(job["xla_flops"].values())) / job["images_per_step"]
        return per_image * (244 / size) ** 2, f"XLA at {size} px scaled by pixels"
    return None, "no throughput job"


def step_time_model(options: Options, comm_job, throughput) -> Optional[Dict[str, Any]]:
    """The on-paper 8-GPU step (comm.py) for the 244 px model, exact vs PowerSGD."""
    if not comm_job or "error" in comm_job:
        return None
    per_image, how = _flops_per_image_244(throughput)
    gpu_s = None
    if options.gpu_result:  # a gpu_bench.sh result: our step's time at the earlier batch
        row = max(step_rows(options.gpu_result), key=lambda r: r["images_per_s"])
        gpu_s = 2 * comm.EARLIER_GLOBAL_PAIRS / comm.GPUS / row["images_per_s"]
    if per_image is None and gpu_s is None:
        return None
    source = comm.compute_source(gpu_s, per_image or 0.0)
    steps = comm.step_model(comm_job["params"], comm_job["powersgd"], source["compute_s"])
    return {**source, "flops_per_image": per_image, "flops_source": how, "steps": steps}


def machine() -> Dict[str, Any]:
    """What the numbers were measured on."""
    import jax
    info = {"python": platform.python_version(), "jax": jax.__version__,
            "cpu_count": os.cpu_count(), "processor": _cpu_model(),
            "cpu_flags": _cpu_flags(), "load_avg_start": os.getloadavg()[0]}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name")), platform.processor())
    except OSError:
        return platform.processor()


def _cpu_flags() -> str:
    """The vector extensions that decide bf16 speed (AVX-512 BF16, AMX) on this CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return " ".join(f for f in wanted if f in flags) or "none of avx2/avx512/amx"


def run_all(options: Options) -> Dict[str, Any]:
    """Every selected section, one job process at a time; the results as one dict."""
    start, results = time.time(), {"machine": machine(), "options": dataclasses.asdict(options)}
    results["options"].pop("gpu_result")
    if "throughput" in options.sections:
        results["throughput"] = run_throughput(options)
    if "scaling" in options.sections:
        results["scaling"] = run_scaling(options)
    if "powersgd" in options.sections:
        results["comm"] = run_comm(options)
        results["model"] = step_time_model(options, results["comm"],
                                           results.get("throughput", []))
    if "pipeline" in options.sections:
        results["pipeline"] = run_pipeline(options)
    results["jobs"] = results.get("throughput", []) + [
        results[k] for k in ("scaling", "comm", "pipeline") if results.get(k)]
    results["machine"]["load_avg_end"] = os.getloadavg()[0]
    results["wall_s"] = time.time() - start
    return results
