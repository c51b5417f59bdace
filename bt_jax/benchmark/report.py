"""Markdown tables of a benchmark run (the JSON that ``scripts/benchmark.py`` writes)."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from bt_jax.benchmark import comm

TORCH = "PyTorch"
TORCH_F32 = "PyTorch f32"
OURS_PLAIN = "ours f32"
FAST_CPU_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def _table(header: List[str], rows: List[List[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def ok_jobs(jobs):
    """The jobs that finished (a failed job carries an 'error' instead of results)."""
    return [j for j in jobs if "error" not in j]


def cpu_path(spec) -> str:
    """The CPU path a job ran on, named against the entry points' default (bt_jax/runtime/devices.py
    turns the ynn flag on unless XLA rejects it): 'default (ynn on)', 'ynn off', ..."""
    flags = spec.get("xla_flags", "")
    if "fast_cpu" not in spec:  # a run from before the default changed: its flags verbatim
        return flags.replace("--xla_cpu_experimental_", "") or "XLA's default"
    name = "ynn on" if spec["fast_cpu"] else "ynn off"
    if spec.get("malloc", "") != spec.get("malloc_default", ""):
        name += f" + {spec['malloc'] or 'C library'} malloc"
    if on_default_path({"spec": spec}):
        name = f"default ({name})"
    extra = [f for f in flags.split() if f != FAST_CPU_FLAG]
    return name + (" + " + " ".join(extra) if extra else "")


def on_default_path(job) -> bool:
    spec = job["spec"]
    if "fast_cpu" not in spec:
        return not spec.get("xla_flags")
    return (spec["fast_cpu"] == spec.get("fast_cpu_default", spec["fast_cpu"])
            and spec.get("malloc", "") == spec.get("malloc_default", ""))


def step_name(spec) -> str:
    """What a job's step trains: the plan names it; older runs only had ResNets."""
    case = spec["case"]
    return spec.get("step") or {"resnet50": "ResNet-50"}.get(case.get("arch", "resnet50"),
                                                              case.get("arch"))


def peak_flops(job) -> Optional[float]:
    """The job's best measured matmul rate in the model's dtype family (the MFU limit)."""
    rates = [v for k, v in job.get("peaks", {}).items() if k.endswith(job["spec"].get(
        "peak_for_mfu", "float32"))]
    return max(rates) if rates else None


def baseline(job) -> Optional[str]:
    """PyTorch's best in the job: its fastest runner by median, whatever the precision or
    layout (f32, channels_last, bf16 autocast where the CPU has it). The bar to beat."""
    torch = {k: v["median_s"] for k, v in job["summary"].items() if k.startswith(TORCH)}
    return min(torch, key=torch.get) if torch else None


def step_rows(job) -> List[Dict[str, Any]]:
    """One row per runner of a throughput job: its time, its ratio to the job's PyTorch
    baseline (medians, and fastest steps, the least disturbed on a shared machine) and MFU."""
    s, peak = job["summary"], peak_flops(job)
    base_name = job["spec"].get("baseline") or baseline(job)
    base = s.get(base_name, {})
    # Every variant does the same maths: the f32 count is the step's model FLOPs.
    xla = job.get("xla_flops", {})
    flops = xla.get(OURS_PLAIN) or next(iter(xla.values()), None) or job.get("torch_flops")
    rows = []
    for name, stats in s.items():
        median, is_base = stats["median_s"], name == base_name
        rows.append({"job": job["spec"]["label"], "runner": name, "median_s": median,
                     "iqr": (stats["q1_s"], stats["q3_s"]), "min_s": stats["min_s"],
                     "n": stats["n"], "images_per_s": job["images_per_step"] / median,
                     "vs_torch": median / base["median_s"] if base and not is_base else None,
                     "vs_torch_min": stats["min_s"] / base["min_s"] if base and not is_base else None,
                     "mfu": flops / median / peak if flops and peak else None})
    return rows


def throughput_table(jobs) -> str:
    rows = []
    for job in ok_jobs(jobs):
        spec = job["spec"]
        for r in step_rows(job):
            rows.append([step_name(spec), spec["case"]["image_size"], spec["case"]["batch"],
                         cpu_path(spec), r["runner"],
                         f"{r['median_s']:.2f} ({r['iqr'][0]:.2f}-{r['iqr'][1]:.2f})",
                         f"{r['min_s']:.2f}", r["n"], _fmt(r["images_per_s"]),
                         _fmt(r["vs_torch"], 3), _fmt(r["vs_torch_min"], 3),
                         "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
                         "{:.1f}-{:.1f}".format(*job.get("load_avg", (0, 0)))])
    return _table(["step", "px", "batch (pairs)", "CPU path", "runner", "median s (IQR)",
                   "fastest s", "steps", "images/s", "/ best PyTorch (medians)",
                   "/ same (fastest steps)", "MFU", "load avg"], rows)


def _case_key(job):
    case = job["spec"]["case"]
    return (step_name(job["spec"]), case["image_size"], case["batch"])


def default_vs_off_table(jobs) -> str:
    """Our plain f32 step on the default CPU path against the same step with ynn off.

    The two run in separate processes (XLA reads its flags once), so the ratio also
    carries any change in load between them; the load averages are printed beside it.
    """
    rows = []
    for key in dict.fromkeys(_case_key(j) for j in ok_jobs(jobs)):
        same = [j for j in ok_jobs(jobs) if _case_key(j) == key and OURS_PLAIN in j["summary"]]
        default = next((j for j in same if on_default_path(j)), None)
        for other in (j for j in same if j is not default and default is not None):
            a, b = default["summary"][OURS_PLAIN], other["summary"][OURS_PLAIN]
            rows.append([*key, cpu_path(default["spec"]), f"{a['median_s']:.3f}",
                         cpu_path(other["spec"]), f"{b['median_s']:.3f}",
                         _fmt(b["median_s"] / a["median_s"], 3), _fmt(b["min_s"] / a["min_s"], 3),
                         "{:.1f}-{:.1f} / {:.1f}-{:.1f}".format(
                             *default.get("load_avg", (0, 0)), *other.get("load_avg", (0, 0)))])
    if not rows:
        return ("not measured (no job off the default path: --levers ynn,malloc, "
                "--facenet_ynn_off)")
    return _table(["step", "px", "batch (pairs)", "path", "ours f32 median s", "other path",
                   "ours f32 median s", "speed-up of the default (medians)", "(fastest steps)",
                   "load avg (default / other)"], rows)


def _verdict(median_ratio: float, fastest_ratio: float, target: float = 1.0) -> str:
    """Met or missed on both statistics; when they disagree, say so rather than pick one.

    Other jobs on a shared machine slow PyTorch's OpenMP threads more than XLA's, so a
    loaded run can meet the target on medians alone while the fastest steps miss it.
    """
    if median_ratio <= target and fastest_ratio <= target:
        return "met"
    if median_ratio > target and fastest_ratio > target:
        return "missed"
    return "unsettled: the medians and the fastest steps disagree"


def headline(jobs) -> List[str]:
    """One line per step measured on the default path: ours against PyTorch's best."""
    lines = []
    for job in ok_jobs(jobs):
        base = job["spec"].get("baseline") or baseline(job)
        ours = [n for n in job["summary"] if not n.startswith(TORCH)]
        if not on_default_path(job) or not base or not ours:
            continue
        s = job["summary"]
        best = min(ours, key=lambda n: s[n]["median_s"])
        a, b = s[best]["median_s"], s[base]["median_s"]
        fastest = (min(s[n]["min_s"] for n in ours)
                   / min(s[n]["min_s"] for n in s if n.startswith(TORCH)))
        case = job["spec"]["case"]
        lines.append(f"* {step_name(job['spec'])}, {case['image_size']} px, {case['batch']} pairs: "
                     f"{best} {a:.2f} s, {base} {b:.2f} s: **{a / b:.2f}x**, fastest steps "
                     f"{fastest:.2f}x (target <= 1.0x: {_verdict(a / b, fastest)})"
                     f"{_like_for_like(job)}")
    return lines


def _like_for_like(job) -> str:
    """Ours against PyTorch's best in the same precision, for each precision both ran."""
    s, parts = job["summary"], []
    for label, ours, torch in (("f32", OURS_PLAIN, lambda n: "bf16" not in n),
                               ("bf16", "ours bf16", lambda n: "bf16" in n)):
        theirs = [n for n in s if n.startswith(TORCH) and torch(n)]
        if ours in s and theirs:
            b = min(s[n]["median_s"] for n in theirs)
            parts.append(f"{label} {s[ours]['median_s'] / b:.2f}x")
    return "; like for like, ours / PyTorch's best: " + ", ".join(parts) if parts else ""


def lever_table(jobs) -> str:
    """Every variant of ours against plain f32 on the default CPU path at the same step.

    Same-process ratios come from alternated steps; a variant from another process (the
    other CPU path) is compared across processes, so it also carries any change in load.
    """
    rows = []
    for key in dict.fromkeys(_case_key(j) for j in ok_jobs(jobs)):
        at_key = [j for j in ok_jobs(jobs) if _case_key(j) == key]
        plain = next((j for j in at_key if on_default_path(j) and OURS_PLAIN in j["summary"]),
                     None)
        base = plain["summary"][OURS_PLAIN] if plain else None
        for job in at_key:
            ours = {v["name"] for v in job["spec"]["jax"]}
            for name, stats in job["summary"].items():
                if name in ours:
                    rows.append([key[0], key[1], name, cpu_path(job["spec"]),
                                 f"{stats['median_s']:.3f}",
                                 _fmt(base["median_s"] / stats["median_s"] if base else None, 3),
                                 _fmt(base["min_s"] / stats["min_s"] if base else None, 3),
                                 "same" if job is plain else "other (load may differ)"])
    return _table(["step", "px", "our step", "CPU path", "median s",
                   "speed-up vs ours f32, default path (medians)", "(fastest steps)",
                   "process"], rows)


def mfu_table(jobs) -> str:
    rows = []
    for job in ok_jobs(jobs):
        flops = job.get("xla_flops", {})
        peaks = ", ".join(f"{k} {v / 1e9:.0f}" for k, v in job.get("peaks", {}).items())
        main = flops.get(OURS_PLAIN) or next(iter(flops.values()), None)
        rows.append([job["spec"]["label"], _fmt(main / 1e9 if main else None, 1),
                     _fmt(job.get("torch_flops", 0) / 1e9 or None, 1),
                     _fmt(main / job["images_per_step"] / 1e9 if main else None, 2), peaks])
    return _table(["job", "step GFLOP (XLA cost analysis)", "step GFLOP (PyTorch counter)",
                   "GFLOP per image", "matmul peak GFLOP/s (best of 3)"], rows)


def scaling_table(job) -> str:
    if not job or "error" in job:
        return f"not measured ({job.get('error') if job else 'section not selected'})"
    s, rows = job["summary"], []
    base = next(iter(s.values()))["median_s"]
    for name, stats in s.items():
        rows.append([name, f"{stats['median_s']:.3f} ({stats['q1_s']:.2f}-{stats['q3_s']:.2f})",
                     stats["n"], _fmt(job["images_per_step"] / stats["median_s"]),
                     _fmt(stats["median_s"] / base, 3), _fmt(job["compile_s"][name], 0)])
    case = job["spec"]["case"]
    return (f"{step_name(job['spec'])} at {case['image_size']} px, projector {case['projector']}, "
            f"global batch {case['batch']} pairs, CPU path: {cpu_path(job['spec'])}.\n\n"
            + _table(["devices (simulated)", "median s (IQR)", "steps", "images/s",
                      "time / 1 device", "compile s"], rows))


POWERSGD_TARGET = 1.10  # PowerSGD step / exact step at the earlier work's size


def powersgd_ratio(job) -> Optional[float]:
    """Median PowerSGD step / median exact step of a powersgd job."""
    if not job or "error" in job or "exact" not in job.get("summary", {}):
        return None
    s = job["summary"]
    other = [k for k in s if k != "exact"]
    return s[other[0]]["median_s"] / s["exact"]["median_s"] if other else None


def powersgd_table(job) -> str:
    """Exact vs PowerSGD at the earlier work's size: absolute times, ratio, the setting and
    its memory, and the verdict against the target."""
    if not job:
        return "not measured (--powersgd_devices 0)"
    spec = job["spec"]
    case, memory = spec["case"], spec.get("memory_estimate", {})
    setting = (f"{step_name(spec)} at {case['image_size']} px, projector {case['projector']}, "
               f"{case['num_devices']} simulated devices x {case['batch'] // case['num_devices']} "
               f"pairs each (global batch {case['batch']} pairs), rank {spec['rank']}, CPU path: "
               f"{cpu_path(spec)}. Chosen to fit in {memory.get('budget_gb', 18):.0f} GB: "
               f"{memory.get('text', 'no estimate')}.")
    if "error" in job:
        return setting + f"\n\nnot measured ({job['error']})"
    s, rows = job["summary"], []
    for name, stats in s.items():
        rows.append([name, f"{stats['median_s']:.2f} ({stats['q1_s']:.2f}-{stats['q3_s']:.2f})",
                     f"{stats['min_s']:.2f}", stats["n"],
                     _fmt(job["images_per_step"] / stats["median_s"]),
                     _fmt(stats["median_s"] / s["exact"]["median_s"], 3),
                     _fmt(stats["min_s"] / s["exact"]["min_s"], 3),
                     _fmt(job["compile_s"].get(name), 0)])
    ratio = powersgd_ratio(job)
    verdict = (f"PowerSGD / exact = **{ratio:.3f}** (medians; target <= {POWERSGD_TARGET:.2f}: "
               f"{'met' if ratio <= POWERSGD_TARGET else 'missed'}). Peak host RSS "
               f"{_fmt(job.get('rss_mb'), 0)} MB.")
    return (setting + "\n\n" + _table(
        ["reducer", "median s (IQR)", "fastest s", "steps", "images/s", "/ exact (medians)",
         "/ exact (fastest steps)", "compile s"], rows) + "\n\n" + verdict)


def _cpu_steps(comm_job, results) -> Tuple[Dict[str, float], str]:
    """{reducer row: median CPU step s} and where they come from: the powersgd job, or in
    runs from before it the scaling job's PowerSGD runner."""
    job = results.get("powersgd")
    if job and "error" not in job:
        rank = job["spec"]["rank"]
        return ({"exact": job["summary"]["exact"]["median_s"],
                 str(rank): job["summary"][f"PowerSGD r{rank}"]["median_s"]},
                f"CPU step s ({job['spec']['case']['num_devices']} simulated devices, section 6)")
    scaling = results.get("scaling")
    if scaling and "error" not in scaling:
        most = max(scaling["spec"]["devices"])
        steps = {"exact": scaling["summary"].get(f"{most} dev", {}).get("median_s")}
        for rank in comm_job["powersgd"]:
            got = scaling["summary"].get(f"{most} dev PowerSGD r{rank}")
            steps[rank] = got["median_s"] if got else None
        return steps, f"CPU step s ({most} simulated devices, scaling model)"
    return {}, "CPU step s"


def comm_table(comm_job, results) -> str:
    """Floats a device sends per step, and the CPU step time of the same reducers."""
    if not comm_job or "error" in comm_job:
        return "not measured"
    exact = comm_job["params"]
    step, where = _cpu_steps(comm_job, results)
    rows = [["exact pmean", f"{exact:,.0f}", f"{exact * 4 / 1e6:.1f}", "1.0",
             _fmt(step.get("exact"), 3)]]
    for rank, floats in comm_job["powersgd"].items():
        rows.append([f"PowerSGD rank {rank}", f"{floats:,.0f}", f"{floats * 4 / 1e6:.2f}",
                     f"{exact / floats:.0f}", _fmt(step.get(rank), 3)])
    return _table(["reducer", "floats / device / step", "MB (float32)", "compression", where],
                  rows)


def model_table(model: Dict[str, Any]) -> str:
    steps = model["steps"]
    names = list(next(iter(steps.values())))
    rows = [[link] + [f"{1e3 * r[n]['comm_s']:.1f} / {1e3 * r[n]['step_s']:.0f}" for n in names]
            for link, r in steps.items()]
    measured = ""
    if model.get("overhead"):
        measured = (f" The last column adds PowerSGD's own compute as measured on this CPU "
                    f"(section 6: its step x{model['overhead']:.3f} the exact one's), carried "
                    "over to the GPU's compute time as the same fraction.")
    return (f"Compute per step: {1e3 * model['compute_s']:.0f} ms per GPU ({model['source']}). "
            f"Cells: all-reduce ms / step ms, {comm.GPUS} GPUs, float32 gradients, no overlap."
            + measured + "\n\n" + _table(["interconnect"] + names, rows))


def pipeline_table(job, consumers: Dict[str, Dict[int, float]]) -> str:
    """Pipeline images/s against what each consumer (CPU step, assumed GPUs) eats."""
    if not job or "error" in job:
        return f"not measured ({job.get('error') if job else 'section not selected'})"
    rows = []
    for size, rate in ((int(k), v) for k, v in job.items() if k.isdigit()):
        for who, per_size in consumers.items():
            if size in per_size:
                rows.append([size, f"{rate['images_per_s']:.0f} ({rate['threads']} threads)",
                             who, _fmt(per_size[size], 1), _fmt(rate["images_per_s"] / per_size[size], 2)])
    return _table(["px", "pipeline images/s", "consumer", "consumer images/s",
                   "pipeline / consumer"], rows)


def memory_table(results) -> str:
    rows = [[j["spec"]["kind"], j["spec"].get("label", ""), _fmt(j.get("rss_mb"), 0),
             _fmt(j.get("wall_s"), 0)] for j in results["jobs"] if "error" not in j]
    rows += [[j["spec"]["kind"], j["spec"].get("label", ""), j["error"], ""]
             for j in results["jobs"] if "error" in j]
    return _table(["job", "label", "peak host RSS MB", "wall s"], rows)


def _consumers(results) -> Dict[str, Dict[int, float]]:
    """Images/s that each consumer of the pipeline eats, per image size."""
    ours: Dict[int, float] = {}
    for job in ok_jobs(results.get("throughput", [])):
        names = {v["name"] for v in job["spec"]["jax"]}
        rates = [r["images_per_s"] for r in step_rows(job) if r["runner"] in names]
        size = job["spec"]["case"]["image_size"]
        if rates:
            ours[size] = max(ours.get(size, 0.0), max(rates))
    out = {"our fastest step on this CPU": ours}
    model = results.get("model")
    if model:
        per_host = comm.GPUS * 2 * comm.EARLIER_GLOBAL_PAIRS / comm.GPUS / model["compute_s"]
        out[f"8 GPUs of one host ({'measured' if 'measured' in model['source'] else 'assumed'})"] = {244: per_host}
    return out


def _machine(results) -> str:
    m = results["machine"]
    bf16 = {True: "has", False: "lacks"}.get(m.get("bf16_native"), "may lack")
    path = {True: "XLA's YNN convolution fusion on (ynn on)",
            False: "XLA's default (ynn off: XLA rejected the flag)",
            None: "XLA's default (the run predates the ynn default)"}[m.get("fast_cpu_default")]
    return (f"CPU: **{m['processor']}**, {m['cpu_count']} cores ({m['cpu_flags']}; it {bf16} "
            f"native bf16: AVX-512 BF16 or AMX). jax {m['jax']}, torch {m.get('torch', 'n/a')}, "
            f"Python {m['python']}. Load average {m['load_avg_start']:.1f} at the start, "
            f"{m['load_avg_end']:.1f} at the end; the run took {results['wall_s'] / 60:.1f} min."
            "\n\nOur default CPU path, as the entry points set it (bt_jax/runtime/devices.py): "
            f"{path}. "
            f"{_allocator(m)} Every job process gets its XLA_FLAGS, BT_JAX_FAST_CPU and "
            "allocator from the benchmark, none from the shell, so each row says which path it "
            "ran on.")


def _allocator(m) -> str:
    malloc = m.get("malloc_default")
    if malloc is None:
        return "Allocator: not recorded (the run predates the tcmalloc default)."
    if not malloc:
        return ("Allocator: the C library's malloc (no tcmalloc found; the entry points "
                "would preload one).")
    return (f"Allocator: {malloc}, preloaded as the entry points do, into every job "
            "process: PyTorch's runners share the process, so they have it too.")


def _summary(results) -> str:
    lines = headline(results.get("throughput", []) + results.get("facenet", []))
    ratio = powersgd_ratio(results.get("powersgd"))
    if ratio is not None:
        lines.append(f"* PowerSGD rank {results['powersgd']['spec']['rank']} / exact at the "
                     f"earlier work's size: **{ratio:.3f}** (target <= {POWERSGD_TARGET:.2f}: "
                     f"{'met' if ratio <= POWERSGD_TARGET else 'missed'})")
    return "## Summary\n\n" + ("\n".join(lines) or "nothing measured")


STEP_TEXT = ("Each process alternates its runners step by step (rotating the order), after "
             "one warm-up step each, with the same batch and threads on both sides. PyTorch runs "
             "f32 in both of oneDNN's layouts (NCHW and channels_last), and bf16 autocast where "
             "the CPU has native bf16; ratios are to PyTorch's best, its fastest runner in the "
             "same process, and below 1 mean ours is faster. PyTorch's OpenMP threads suffer far "
             "more than XLA's from other jobs on the cores, so under load the medians favour us; "
             "the fastest-step ratio and the load average are printed to judge that.")


def _step_sections(results) -> List[str]:
    parts = []
    if "throughput" in results:
        parts.append("## 1. ResNet-50 step: ours against PyTorch\n\nThe full Barlow Twins step "
                     "(on-device flip + normalisation, ResNet-50, projector, loss, LARS) on one "
                     "device. " + STEP_TEXT + "\n\n" + throughput_table(results["throughput"]))
        parts.append("### Levers\n\n" + lever_table(results["throughput"]))
    if "facenet" in results:
        parts.append("## 2. FaceNet steps: ours against PyTorch\n\nInception-ResNet-v1 at "
                     "160 px: the whole network's Barlow Twins step (configs/facenet.py: LARS, "
                     "batch-statistics BatchNorm), and the fine-tuning recipe's step "
                     "(configs/mlfw_facenet.py: the head after Mixed_7a and the projector on the "
                     "frozen trunk's cached float16 activations, AdamW, BatchNorm on running "
                     "statistics). PyTorch: bt_jax.reference.torch_models.InceptionResNetV1 "
                     "(whole, or "
                     "start_after='Mixed_7a') in BarlowTwinsReference with the same projector and "
                     "optimizer. " + STEP_TEXT + "\n\n" + throughput_table(results["facenet"]))
    steps = results.get("throughput", []) + results.get("facenet", [])
    if steps:
        parts.append("## 3. Default CPU path against the others (ynn, malloc)\n\nOur plain "
                     "f32 step with the entry points' default (ynn on, tcmalloc where found) "
                     "against the same step in a process with the flag off (BT_JAX_FAST_CPU=0, "
                     "as `--nofast_cpu` gives) or with the C library's malloc "
                     "(BT_JAX_TCMALLOC=0, as `--notcmalloc` gives); separate processes, so "
                     "load may differ."
                     "\n\n" + default_vs_off_table(steps))
        parts.append("## 4. Model FLOPs utilisation\n\nMFU = step FLOPs (XLA cost analysis of "
                     "the compiled f32 step) / median step time / the best matmul rate measured "
                     "in the same process.\n\n" + mfu_table(steps))
    return parts


def _powersgd_sections(results) -> List[str]:
    parts = ["## 6. Exact vs PowerSGD"]
    if "powersgd" in results:
        parts.append("### Step time on this CPU\n\nOn simulated devices an all-reduce is a "
                     "memory copy, so this is PowerSGD's compute cost (matrix products, "
                     "orthogonalisation, error feedback) against the exact step's.\n\n"
                     + powersgd_table(results["powersgd"]))
    case = results["comm"]["spec"].get("case", {})
    parts.append(f"### Traffic\n\nFloats each device sends per step for "
                 f"{step_name(results['comm']['spec']) if case else 'the model'} at "
                 f"{case.get('image_size', 244)} px, projector {case.get('projector', 'n/a')} "
                 "(the earlier work's model in a full run).\n\n"
                 + comm_table(results["comm"], results))
    if results.get("model"):
        parts.append("### On paper: 8 GPUs\n\n" + comm.ASSUMPTIONS + "\n\n"
                     + model_table(results["model"]))
    return parts


HAND_WRITTEN = ("<!-- hand-written:start -->", "<!-- hand-written:end -->")


def hand_written_block(markdown: str) -> str:
    """The hand-written section of an earlier docs/benchmarks.md (markers included), or ''
    if it has none: a rerun carries it over instead of deleting it."""
    start, end = markdown.find(HAND_WRITTEN[0]), markdown.find(HAND_WRITTEN[1])
    if start < 0 or end < start:
        return ""
    return markdown[start:end + len(HAND_WRITTEN[1])]


def hand_written_in(md_path: str) -> str:
    """``hand_written_block`` of the file about to be overwritten ('' if there is none)."""
    if not md_path or not os.path.exists(md_path):
        return ""
    with open(md_path) as f:
        return hand_written_block(f.read())


def render(results: Dict[str, Any], command: str, hand_written: str = "") -> str:
    """The whole of docs/benchmarks.md; ``hand_written`` (``hand_written_block``) goes
    after the machine's description."""
    parts = ["# Benchmarks\n\nGenerated by `scripts/benchmark.py` except the hand-written "
             "section; do not edit the rest by hand, rerun:"
             f"\n\n```\n{command}\n```\n\n" + _machine(results)]
    parts += [hand_written] if hand_written else []
    parts.append(_summary(results))
    parts += _step_sections(results)
    if "scaling" in results:
        parts.append("## 5. Scaling over simulated devices (fixed global batch)\n\n"
                     + scaling_table(results["scaling"]))
    if "comm" in results:
        parts += _powersgd_sections(results)
    if "pipeline" in results:
        parts.append("## 7. Input pipeline against the step\n\n" + pipeline_table(
            results["pipeline"], _consumers(results)))
    parts.append("## Peak host memory and time per job\n\n" + memory_table(results))
    return "\n\n".join(parts) + "\n"
