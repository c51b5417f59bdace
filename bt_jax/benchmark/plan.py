"""Which jobs a benchmark run starts, in which order and on which CPU path.

Every job runs on the entry points' default CPU path (XLA's ynn convolution fusion on,
where XLA accepts the flag: bt_jax/runtime/devices.py) unless it is the comparison with the flag
off; the job processes get their flags from here, never from the shell. Levers are
measured in full at the first image size only (every variant is a compilation of about a
minute on this CPU); the other sizes measure the plain step and the fastest combination
found there, next to PyTorch's best. Then the FaceNet steps (the whole Inception-ResNet-v1,
and the fine-tuning recipe's head on cached trunk activations), scaling over simulated
devices, exact vs PowerSGD at the earlier work's size, and the input pipeline.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Any, Dict, List, Optional, Tuple

from bt_jax.benchmark import cases, comm, jobs, measure
from bt_jax.benchmark.report import OURS_PLAIN, TORCH_F32, ok_jobs, powersgd_ratio, step_rows

LEVERS = ("fused", "ynn", "nodonate", "malloc")
FACENET_STEPS = ("full", "trunk")
# The recipe each FaceNet step takes its settings from (configs/<recipe>.py).
FACENET_RECIPES = {"full": "facenet", "trunk": "mlfw_facenet"}
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


@dataclasses.dataclass
class Options:
    sections: Tuple[str, ...] = ("throughput", "facenet", "powersgd", "scaling", "pipeline")
    sizes: Tuple[int, ...] = (112, 244)
    batches: Tuple[int, ...] = (4, 2)  # pairs per step, one per size
    projector: str = "2048-4096-8192"
    arch: str = "resnet50"  # 'tiny' for smoke tests
    rounds: int = 5  # 4 let two slow steps of 4 (3.0 s against 1.0 s) set a median
    levers: Tuple[str, ...] = ("ynn", "malloc")  # 'fused', 'nodonate': one more compile each
    # bf16 runners on both sides (ours bf16, PyTorch bf16 autocast): 'auto' where the CPU
    # has native bf16 (without it both are slower than f32: docs/benchmarks.md history).
    bf16: str = "auto"
    torch_bf16_rounds: int = 0  # cap on PyTorch bf16 autocast's timed steps; 0: rounds
    threads: int = 0  # PyTorch threads; 0 = the cores XLA uses
    platform: str = "cpu"  # 'gpu': one device, no CPU flag variants, PyTorch on CUDA
    xla_flags: str = ""  # more XLA flags for every job (the shell's XLA_FLAGS are not used)
    facenet_steps: Tuple[str, ...] = FACENET_STEPS
    facenet_batch: int = 4  # pairs, the whole Inception-ResNet-v1 at 160 px
    trunk_batch: int = 32  # pairs, the cached-trunk step: the recipe's 256 over 8 devices
    facenet_ynn_off: Tuple[str, ...] = ("trunk",)  # steps also timed with ynn off
    facenet_arch: str = ""  # '' : the recipe's; 'tiny_inception' for smoke tests
    facenet_size: int = 0  # 0: the recipe's (160 px)
    scaling_size: int = 64
    scaling_batch: int = 8
    scaling_projector: str = "512-512"
    scaling_devices: Tuple[int, ...] = (1, 8)
    scaling_rounds: int = 3
    powersgd_ranks: Tuple[int, ...] = (1, 2, 4)
    powersgd_step_rank: int = 4  # the rank whose step is timed; 0 = none
    powersgd_size: int = 244
    powersgd_devices: int = 2  # simulated devices of the timed step; 0 = no step
    powersgd_batch: int = 2  # pairs per device: global 8, as the 8-device run that did not fit
    # Before the reducer stopped forming M and P Q^T: 3 alternated steps gave 1.003 and
    # 1.142 in two runs, 6 gave 1.076 (IQRs of 0.8 s+). After, with tcmalloc, 4 gave 1.015,
    # 1.077 and 0.954 in three runs.
    powersgd_rounds: int = 4
    powersgd_memory_gb: float = 18.0  # what the chosen setting must fit in
    data_dir: str = ""
    pipeline_batch: int = 64
    pipeline_batches: int = 5
    pipeline_workers: int = 0
    job_timeout_s: float = 3600
    fast_cpu_default: Optional[bool] = None  # None: probe XLA as the entry points do
    malloc_default: Optional[str] = None  # the tcmalloc they preload, '' none; None: look
    gpu_result: Optional[Dict[str, Any]] = None  # a gpu_bench.sh JSON for the 8-GPU model


def quick(options: Options) -> Options:
    """--quick: 112 px and the cheap steps only, 3 rounds. The whole Inception-ResNet-v1
    (a compile of over a minute) and the PowerSGD step and scaling (minutes of compiling)
    are left to the full run; PowerSGD's traffic and 8-GPU model stay."""
    return dataclasses.replace(
        options, sections=tuple(s for s in options.sections if s != "scaling"),
        sizes=(112,), batches=(2,), rounds=3, levers=("ynn",), bf16="off",
        facenet_steps=("trunk",), powersgd_devices=0)


def native_bf16() -> bool:
    return any(f in _cpu_flags().split() for f in NATIVE_BF16)


def bf16_on(options: Options) -> bool:
    return options.bf16 == "on" or (options.bf16 == "auto" and native_bf16())


def probe_fast_cpu() -> bool:
    """Whether the entry points' default CPU path has the ynn flag on here: the same probe
    (bt_jax/runtime/devices.py), from a clean environment rather than this shell's."""
    from bt_jax.runtime import devices
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", devices.FAST_CPU_ENV)}
    flags, _ = devices.choose_cpu_flags(env, [])
    return devices.FAST_CPU_FLAG in flags


def _ours(name: str, dtype: str, *, fused: bool = False, donate: bool = True) -> Dict[str, Any]:
    return {"name": name, "dtype": dtype, "fused": fused, "donate": donate}


def probe_malloc() -> str:
    """The allocator the entry points would preload here (bt_jax/runtime/devices.py), ''
    for none."""
    from bt_jax.runtime import devices
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", devices.MALLOC_ENV)}
    return devices.choose_malloc(env, [])[0] or ""


def _stated(options: Options, spec) -> Dict[str, Any]:
    """``spec`` with its allocator (the default unless the spec names one) and the defaults
    it is judged against."""
    return {"malloc": options.malloc_default or "", **spec,
            "fast_cpu_default": options.fast_cpu_default,
            "malloc_default": options.malloc_default or ""}


def _run(options: Options, spec, *, fast_cpu: bool, devices: int = 1) -> Dict[str, Any]:
    """One job with its CPU path stated (``fast_cpu``, ``_stated``)."""
    spec = _stated(options, spec)
    return jobs.run_job(spec, fast_cpu=fast_cpu, devices=devices, extra_flags=options.xla_flags,
                        timeout_s=options.job_timeout_s, malloc=spec["malloc"])


def lever_variants(options: Options) -> List[Tuple[bool, List[Dict[str, Any]]]]:
    """[(ynn on?, our runners)] at the first size: every lever on the default CPU path,
    then (lever 'ynn') plain f32 on the other path."""
    default = [_ours(OURS_PLAIN, "float32")]
    if bf16_on(options):
        default.append(_ours("ours bf16", "bfloat16"))
    if "fused" in options.levers:
        default.append(_ours("ours f32 2B", "float32", fused=True))
    if "nodonate" in options.levers:
        default.append(_ours("ours f32 no-donate", "float32", donate=False))
    variants = [(bool(options.fast_cpu_default), default)]
    if "ynn" in options.levers and options.fast_cpu_default:
        variants.append((False, [_ours(OURS_PLAIN, "float32")]))
    return variants


def _torch(options: Options, arch: str) -> List[Dict[str, Any]]:
    """PyTorch's candidates for its best: f32 in both of oneDNN's layouts, and bf16
    autocast where ``bf16_on``."""
    if arch not in ("resnet50", "inception_resnet_v1", "tiny_inception"):
        return []  # no PyTorch mirror of the tiny ResNet
    runners = [{"name": TORCH_F32, "bf16": False, "channels_last": False},
               {"name": TORCH_F32 + " channels_last", "bf16": False, "channels_last": True}]
    if bf16_on(options):
        runners.append({"name": "PyTorch bf16 autocast", "bf16": True,
                        "rounds": options.torch_bf16_rounds or options.rounds})
    return runners


def _throughput_spec(options: Options, case: Dict[str, Any], ours, torch_runners, label,
                     step: str = "") -> Dict[str, Any]:
    gpu = options.platform == "gpu"
    return {"kind": "throughput", "label": label, "case": case, "step": step,
            "jax": ours, "torch": torch_runners, "rounds": options.rounds,
            "threads": options.threads or (0 if gpu else os.cpu_count()),
            "torch_device": "cuda" if gpu else "cpu", "torch_flops": bool(torch_runners),
            "peak_n": 8192 if gpu else 2048,
            "peak_dtypes": ["bfloat16"] if gpu else ["float32"],
            "peak_for_mfu": "bfloat16" if gpu else "float32"}


def _resnet_case(options: Options, size: int, batch: int) -> Dict[str, Any]:
    return {"image_size": size, "batch": batch, "projector": options.projector,
            "arch": options.arch}


def _path_label(fast: bool, options: Options) -> str:
    return "" if fast == options.fast_cpu_default else (", ynn on" if fast else ", ynn off")


def best_variant(results) -> Tuple[bool, Dict[str, Any]]:
    """(ynn on?, runner) of our runner with the lowest median step time in ``results``.

    Judged on our own times, not on ratios to PyTorch: PyTorch's OpenMP threads slow
    down several-fold as soon as another job takes a core, so a ratio taken in a busier
    process flatters whatever ran there.
    """
    best = None
    for job in ok_jobs(results):
        by_name = {v["name"]: v for v in job["spec"]["jax"]}
        for name, stats in job["summary"].items():
            if name in by_name and (best is None or stats["median_s"] < best[0]):
                best = (stats["median_s"], job["spec"]["fast_cpu"], by_name[name])
    return (best[1], best[2]) if best else (True, _ours(OURS_PLAIN, "float32"))


def first_size_specs(options: Options) -> List[Tuple[Dict[str, Any], bool]]:
    """[(spec, ynn on?)] at the first size: the levers, PyTorch beside the default path."""
    first, out = options.sizes[0], []
    case = _resnet_case(options, first, options.batches[0])
    for fast, ours in lever_variants(options):
        on_default = fast == options.fast_cpu_default
        out.append((_throughput_spec(options, case, ours,
                                     _torch(options, options.arch) if on_default else [],
                                     f"{first}px levers{_path_label(fast, options)}"), fast))
    if "malloc" in options.levers and options.malloc_default:
        # PyTorch too: the allocator changes its steps more than ours (docs/benchmarks.md).
        spec = _throughput_spec(options, case, [_ours(OURS_PLAIN, "float32")],
                                _torch(options, options.arch), f"{first}px levers, C library malloc")
        out.append(({**spec, "malloc": "", "torch_flops": False}, bool(options.fast_cpu_default)))
    return out


def other_size_specs(options: Options, fast: bool,
                     best: Dict[str, Any]) -> List[Tuple[Dict[str, Any], bool]]:
    out = []
    for size, batch in zip(options.sizes[1:], options.batches[1:]):
        for job_fast, ours in _other_size_jobs(options, fast, best):
            torch_runners = (_torch(options, options.arch)
                             if job_fast == options.fast_cpu_default else [])
            spec = _throughput_spec(options, _resnet_case(options, size, batch), ours,
                                    torch_runners, f"{size}px{_path_label(job_fast, options)}")
            spec["torch_flops"] = False  # cross-checked at the first size: the same model
            out.append((spec, job_fast))
    return out


def run_throughput(options: Options) -> List[Dict[str, Any]]:
    if options.platform == "gpu":
        return _run_gpu_throughput(options)
    results = [_run(options, spec, fast_cpu=fast) for spec, fast in first_size_specs(options)]
    fast, best = best_variant(results)
    return results + [_run(options, spec, fast_cpu=f)
                      for spec, f in other_size_specs(options, fast, best)]


def _other_size_jobs(options: Options, fast: bool, best: Dict[str, Any]):
    """[(ynn on?, our runners)] at the other sizes: plain f32 (and bf16 where the CPU has
    it) on the default path always (the headline against PyTorch), the first size's best
    variant beside it, in its own process if it ran on the other path, else (lever 'ynn')
    plain f32 with ynn off."""
    plain, default = _ours(OURS_PLAIN, "float32"), bool(options.fast_cpu_default)
    # bf16 always where it runs: a noisy step at the first size must not drop it here.
    mine = [plain] + ([_ours("ours bf16", "bfloat16")] if bf16_on(options) else [])
    if fast != default:
        return [(default, mine), (fast, [best])]
    out = [(default, mine + ([best] if best["name"] not in {v["name"] for v in mine} else []))]
    if "ynn" in options.levers and default:  # whether the default still wins at this size
        out.append((False, [plain]))
    return out


def facenet_cases(options: Options) -> Dict[str, Tuple[str, Dict[str, Any]]]:
    """{step: (its name, case)} of the FaceNet steps, sizes and projector from the recipes."""
    out = {}
    for step in options.facenet_steps:
        recipe = FACENET_RECIPES[step]
        config = cases.recipe_config(recipe)
        frozen = config.model.get("freeze_until")
        name = (f"FaceNet head after {frozen} (cached trunk)" if frozen
                else "Inception-ResNet-v1 (whole)")
        out[step] = (name, {"recipe": recipe, "arch": options.facenet_arch or config.model.arch,
                            "image_size": options.facenet_size or config.data.image_size,
                            "batch": options.trunk_batch if frozen else options.facenet_batch,
                            "projector": config.model.projector})
    return out


def facenet_specs(options: Options) -> List[Tuple[Dict[str, Any], bool]]:
    """[(spec, ynn on?)]: each FaceNet step on the default path beside PyTorch, and those
    in ``facenet_ynn_off`` again with the flag off."""
    out, default = [], bool(options.fast_cpu_default)
    # Ours in f32, as the recipes train, and in bf16 beside PyTorch's bf16 autocast where
    # the CPU has native bf16 (bf16 1x1 convolutions and dense layers run as f32-accumulated
    # products then: bt_jax/models/ops.py).
    ours = [_ours(OURS_PLAIN, "float32")] + (
        [_ours("ours bf16", "bfloat16")] if bf16_on(options) else [])
    for step, (name, case) in facenet_cases(options).items():
        out.append((_throughput_spec(options, case, ours, _torch(options, case["arch"]),
                                     f"FaceNet {step}", name), default))
        if default and step in options.facenet_ynn_off and options.platform == "cpu":
            out.append((_throughput_spec(options, case, ours, [], f"FaceNet {step}, ynn off",
                                         name), False))
    return out


def run_facenet(options: Options) -> List[Dict[str, Any]]:
    return [_run(options, spec, fast_cpu=fast) for spec, fast in facenet_specs(options)]


def _run_gpu_throughput(options: Options) -> List[Dict[str, Any]]:
    """bf16 on one GPU: our step alone at a batch that fills the card (halved once if it
    does not fit), then side by side with PyTorch bf16 autocast at half that batch (the
    two frameworks share the card's memory in one process)."""
    results, torch_bf16 = [], [{"name": "PyTorch bf16 autocast", "bf16": True}]
    for size, batch in zip(options.sizes, options.batches):
        ours = [_ours("ours bf16", "bfloat16")]

        def job(b, runners, label):
            spec = _throughput_spec(options, _resnet_case(options, size, b), ours, runners, label)
            if runners:
                spec["baseline"] = runners[0]["name"]
            return _run(options, spec, fast_cpu=bool(options.fast_cpu_default))
        alone = job(batch, [], f"{size}px alone")
        if "error" in alone and "timed out" not in alone["error"] and batch > 1:
            batch //= 2
            alone = job(batch, [], f"{size}px alone")
        results += [alone, job(max(1, batch // 2), torch_bf16, f"{size}px with PyTorch")]
    return results


def scaling_spec(options: Options) -> Dict[str, Any]:
    return {"kind": "scaling", "label": f"{options.scaling_size}px",
            "case": {"image_size": options.scaling_size, "batch": options.scaling_batch,
                     "projector": options.scaling_projector, "arch": options.arch},
            "devices": list(options.scaling_devices), "rounds": options.scaling_rounds}


def run_scaling(options: Options) -> Dict[str, Any]:
    return _run(options, scaling_spec(options), fast_cpu=bool(options.fast_cpu_default),
                devices=max(options.scaling_devices))


def run_comm(options: Options) -> Dict[str, Any]:
    spec = {"kind": "comm", "label": f"{options.powersgd_size}px model",
            "case": {"image_size": options.powersgd_size, "projector": options.projector,
                     "arch": options.arch},
            "ranks": list(options.powersgd_ranks)}
    return _run(options, spec, fast_cpu=bool(options.fast_cpu_default))


# Assumed for the memory estimate: ResNet-50's float32 activations kept for the backward
# pass, per 224 px image (PyTorch needs ~22 GB at batch 256), and XLA's runtime and
# compiler around them.
ACTIVATION_GB_224 = 0.09
RUNTIME_GB = 2.0
# The earlier work's model: ResNet-50 at 244 px with the 2048-4096-8192 projector.
EARLIER_PARAMS = 82_240_576


def powersgd_memory(params: float, devices: int, pairs_per_device: int, image_size: int,
                    budget_gb: float = 18.0) -> Dict[str, Any]:
    """Host memory of the exact-vs-PowerSGD job, with its arithmetic.

    Per device: the exact runner's params + LARS momentum (2 copies), PowerSGD's params +
    momentum + error feedback (3), and one step's gradients, updates and PowerSGD's
    M = grad + error (3, while a step runs); then the activations of the step's images.
    At 8 devices x 1 pair this gives ~25 GB: the run that was OOM-killed at 24 GB.
    """
    copy_gb = params * 4 / 1e9
    states = devices * 8 * copy_gb
    images = 2 * devices * pairs_per_device
    per_image = ACTIVATION_GB_224 * (image_size / 224) ** 2
    total = states + images * per_image + RUNTIME_GB
    text = (f"{devices} devices x (2 exact + 3 PowerSGD + 3 in a step) copies of the "
            f"{params / 1e6:.1f} M float32 parameters ({copy_gb:.3f} GB) = {states:.1f} GB, + "
            f"{images} images x {1e3 * per_image:.0f} MB of activations (assumed) = "
            f"{images * per_image:.1f} GB, + {RUNTIME_GB:.0f} GB runtime = about {total:.1f} GB")
    return {"total_gb": total, "budget_gb": budget_gb, "text": text}


def powersgd_spec(options: Options, params: Optional[float]) -> Optional[Dict[str, Any]]:
    """Exact vs PowerSGD at the earlier work's size, on as many devices as fit."""
    n, b = options.powersgd_devices, options.powersgd_batch
    if not n or not options.powersgd_step_rank:
        return None
    memory = powersgd_memory(params or EARLIER_PARAMS, n, b, options.powersgd_size,
                             options.powersgd_memory_gb)
    if memory["total_gb"] > options.powersgd_memory_gb:
        measure.log(f"[plan] warning: the PowerSGD job may not fit: {memory['text']}")
    case = {"image_size": options.powersgd_size, "batch": n * b, "projector": options.projector,
            "arch": options.arch, "num_devices": n}
    return {"kind": "powersgd", "label": f"{options.powersgd_size}px, {n} dev x {b} pairs",
            "case": case, "rank": options.powersgd_step_rank,
            "rounds": options.powersgd_rounds, "memory_estimate": memory}


def run_powersgd(options: Options, comm_job) -> Optional[Dict[str, Any]]:
    params = comm_job.get("params") if comm_job and "error" not in comm_job else None
    spec = powersgd_spec(options, params)
    if spec is None:
        return None
    measure.log(f"[plan] PowerSGD step: {spec['label']}; memory {spec['memory_estimate']['text']}")
    return _run(options, spec, fast_cpu=bool(options.fast_cpu_default),
                devices=spec["case"]["num_devices"])


def run_pipeline(options: Options) -> Dict[str, Any]:
    # The spec (kept in the JSON) names the folder as given; '' is the default beside the repo.
    if not os.path.isdir(os.path.join(jobs.data_dir(options.data_dir), "train")):
        return {"spec": {"kind": "pipeline"},
                "error": f"no training folder under {jobs.data_dir(options.data_dir)}"}
    spec = {"kind": "pipeline", "label": "MLFW train folder", "sizes": list(options.sizes),
            "data": options.data_dir, "batch": options.pipeline_batch,
            "batches": options.pipeline_batches, "workers": options.pipeline_workers}
    return _run(options, spec, fast_cpu=bool(options.fast_cpu_default))


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


def step_time_model(options: Options, comm_job, throughput,
                    powersgd_job=None) -> Optional[Dict[str, Any]]:
    """The on-paper 8-GPU step (comm.py) for the 244 px model, exact vs PowerSGD, plus
    PowerSGD with its compute overhead as measured on this CPU if the step was timed."""
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
    model = {**source, "flops_per_image": per_image, "flops_source": how, "steps": steps}
    ratio = powersgd_ratio(powersgd_job)
    if ratio is not None:
        name = f"PowerSGD r{powersgd_job['spec']['rank']}"
        for row in steps.values():
            if name in row:
                row[name + " + CPU-measured compute"] = {
                    "comm_s": row[name]["comm_s"],
                    "step_s": source["compute_s"] * ratio + row[name]["comm_s"]}
        model["overhead"] = ratio
    return model


def machine(options: Options) -> Dict[str, Any]:
    """What the numbers were measured on, and the CPU path that is the default there."""
    import jax
    info = {"python": platform.python_version(), "jax": jax.__version__,
            "cpu_count": os.cpu_count(), "processor": _cpu_model(),
            "cpu_flags": _cpu_flags(), "bf16_native": native_bf16(),
            "fast_cpu_default": options.fast_cpu_default,
            "malloc_default": options.malloc_default,
            "shell_xla_flags": os.environ.get("XLA_FLAGS", ""),
            "load_avg_start": os.getloadavg()[0]}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    """The CPU's name; with its family and model numbers, since virtual machines often
    report a bare 'AMD EPYC' for generations that differ in bf16 and AVX-512."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor()
    name = fields.get("model name", platform.processor())
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


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


# The time model behind the estimate printed at the start, from the reference machine (a
# 2-core AMD EPYC, Zen 4, docs/benchmarks.md): whole-step FLOP/s at 112 px with tcmalloc
# (larger images run at a higher rate: ~ pixels^0.275), seconds to compile a step and the
# initial weights per model (the Inception-ResNet's from its HLO, 2.1x ResNet-50's), and
# what a job costs besides (process start, matmul peaks). With the C library's malloc,
# steps take longer: ours 1.2x, PyTorch's about 3x (its bf16 step at 112 px: 3.22 s
# against 1.01 s).
STEP_RATE = {"ours": 40e9, "torch": 38e9}
GLIBC_SLOWDOWN = {"ours": 1.2, "torch": 3.0}
# Compile times as measured in the run of docs/benchmarks.md: 19-22 s, 48-59 s, 5-6 s,
# and PowerSGD's step 16 s more than the exact one.
COMPILE_S = {"resnet50": 25, "inception_resnet_v1": 60, "head": 7, "tiny": 3,
             "tiny_inception": 25}
INIT_S = {"resnet50": 8, "inception_resnet_v1": 30, "head": 5, "tiny": 2, "tiny_inception": 15}
POWERSGD_COMPILE_S = 20
JOB_S = 8
GFLOP_PER_IMAGE = {"resnet50": (6.6, 112), "inception_resnet_v1": (8.5, 160),
                   "head": (0.54, 160), "tiny": (0.01, 32), "tiny_inception": (0.05, 80)}


def _model_key(case: Dict[str, Any]) -> str:
    arch = case.get("arch", "resnet50")
    frozen = case.get("recipe") == FACENET_RECIPES["trunk"] and arch == "inception_resnet_v1"
    return "head" if frozen else arch


def _step_s(case: Dict[str, Any], who: str, devices: int = 1, malloc: bool = True) -> float:
    gflop, size = GFLOP_PER_IMAGE.get(_model_key(case), GFLOP_PER_IMAGE["resnet50"])
    flops = 2 * case["batch"] * gflop * 1e9 * (case["image_size"] / size) ** 2
    rate = STEP_RATE[who] * (case["image_size"] / 112) ** 0.55
    slow = 1.0 if malloc else GLIBC_SLOWDOWN[who]
    return flops / rate * slow * (1 + 0.13 * (devices - 1))  # simulated devices: 8 ~ 1.9x


def job_estimate_s(spec: Dict[str, Any]) -> float:
    """Seconds a job should take on the reference machine, quiet."""
    case, kind = spec.get("case"), spec["kind"]
    if not case:
        return 8.0  # comm, pipeline
    key = _model_key(case)
    compile_s = COMPILE_S.get(key, COMPILE_S["resnet50"])
    job_s = JOB_S + INIT_S.get(key, INIT_S["resnet50"]) * (2 if kind == "powersgd" else 1)
    tc = spec.get("malloc") != ""  # a job on the C library's malloc says so; others: tcmalloc
    if kind == "throughput":
        slow = 1 if native_bf16() else 5  # bf16 autocast without native bf16
        torch = sum(_step_s(case, "torch", malloc=tc) * (slow if t["bf16"] else 1)
                    for t in spec["torch"])
        ours = sum(_step_s(case, "ours", malloc=tc) for _ in spec["jax"])
        count = _step_s(case, "torch") if spec.get("torch_flops") else 0.0
        return job_s + compile_s * len(spec["jax"]) + (spec["rounds"] + 1) * (ours + torch) + count
    if kind == "scaling":
        steps = sum(_step_s(case, "ours", n, tc) for n in spec["devices"])
        return job_s + compile_s * len(spec["devices"]) + (spec["rounds"] + 1) * steps
    step = _step_s(case, "ours", case["num_devices"], tc)
    return job_s + 2 * compile_s + POWERSGD_COMPILE_S + (spec["rounds"] + 1) * 2.1 * step


def planned_specs(options: Options) -> Dict[str, List[Dict[str, Any]]]:
    """The jobs a run will start, by section (the other sizes as if plain f32 won)."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    if "throughput" in options.sections and options.platform == "cpu":
        default = bool(options.fast_cpu_default)
        out["throughput"] = [spec for spec, _ in first_size_specs(options) + other_size_specs(
            options, default, _ours(OURS_PLAIN, "float32"))]
    if "facenet" in options.sections:
        out["facenet"] = [spec for spec, _ in facenet_specs(options)]
    if "scaling" in options.sections:
        out["scaling"] = [scaling_spec(options)]
    if "powersgd" in options.sections:
        out["powersgd"] = [{"kind": "comm"}] + [
            spec for spec in [powersgd_spec(options, None)] if spec]
    if "pipeline" in options.sections:
        out["pipeline"] = [{"kind": "pipeline"}]
    return out


def estimate(options: Options) -> Dict[str, float]:
    """{section: seconds} on a quiet 2-core machine like the reference."""
    return {section: sum(job_estimate_s(_stated(options, s)) for s in specs)
            for section, specs in planned_specs(options).items()}


def run_all(options: Options) -> Dict[str, Any]:
    """Every selected section, one job process at a time; the results as one dict."""
    if options.fast_cpu_default is None:
        options = dataclasses.replace(options, fast_cpu_default=probe_fast_cpu())
    if options.malloc_default is None:
        options = dataclasses.replace(options, malloc_default=probe_malloc())
    start, results = time.time(), {"machine": machine(options)}
    results["options"] = {k: v for k, v in dataclasses.asdict(options).items()
                          if k != "gpu_result"}
    if options.platform == "cpu":
        results["estimate_s"] = estimate(options)
        measure.log(f"[plan] estimated {sum(results['estimate_s'].values()) / 60:.1f} min on a "
                    "quiet 2-core machine like the reference AMD EPYC (" + ", ".join(
                        f"{k} {v / 60:.1f}" for k, v in results["estimate_s"].items()) + ")")
    run_sections(options, results)
    results["jobs"] = results.get("throughput", []) + results.get("facenet", []) + [
        results[k] for k in ("scaling", "comm", "powersgd", "pipeline") if results.get(k)]
    results["machine"]["load_avg_end"] = os.getloadavg()[0]
    results["wall_s"] = time.time() - start
    return results


def run_sections(options: Options, results: Dict[str, Any]) -> None:
    if "throughput" in options.sections:
        results["throughput"] = run_throughput(options)
    if "facenet" in options.sections:
        results["facenet"] = run_facenet(options)
    if "scaling" in options.sections:
        results["scaling"] = run_scaling(options)
    if "powersgd" in options.sections:
        results["comm"] = run_comm(options)
        results["powersgd"] = run_powersgd(options, results["comm"])
        results["model"] = step_time_model(options, results["comm"],
                                           results.get("throughput", []), results["powersgd"])
    if "pipeline" in options.sections:
        results["pipeline"] = run_pipeline(options)
