"""Markdown tables of a benchmark run (the JSON that ``scripts/benchmark.py`` writes)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from bt_jax.benchmark import comm

TORCH_F32 = "PyTorch f32"
OURS_PLAIN = "ours f32"


def _table(header: List[str], rows: List[List[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:,.{digits}f}"


def ok_jobs(jobs):
    """The jobs that finished (a failed job carries an 'error' instead of results)."""
    return [j for j in jobs if "error" not in j]


def _flags(job) -> str:
    return job["spec"]["xla_flags"].replace("--xla_cpu_experimental_", "") or "default"


def peak_flops(job) -> Optional[float]:
    """The job's best measured matmul rate in the model's dtype family (the MFU limit)."""
    rates = [v for k, v in job.get("peaks", {}).items() if k.endswith(job["spec"].get(
        "peak_for_mfu", "float32"))]
    return max(rates) if rates else None


def baseline(job) -> Optional[str]:
    """The job's fastest PyTorch f32 runner (either layout): the bar to beat."""
    torch = {k: v["median_s"] for k, v in job["summary"].items() if k.startswith(TORCH_F32)}
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
            rows.append([spec["case"]["image_size"], spec["case"]["batch"], _flags(job),
                         r["runner"], f"{r['median_s']:.2f} ({r['iqr'][0]:.2f}-{r['iqr'][1]:.2f})",
                         f"{r['min_s']:.2f}", r["n"], _fmt(r["images_per_s"]),
                         _fmt(r["vs_torch"], 3), _fmt(r["vs_torch_min"], 3),
                         "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
                         "{:.1f}-{:.1f}".format(*job.get("load_avg", (0, 0)))])
    return _table(["px", "batch (pairs)", "XLA flags", "step", "median s (IQR)", "fastest s",
                   "steps", "images/s", "/ best PyTorch f32 (medians)", "/ same (fastest steps)", "MFU",
                   "load avg"], rows)


def lever_table(jobs) -> str:
    """Every variant of ours against plain f32 with default flags at the same size.

    Same-process ratios come from alternated steps; a variant from another process (the
    XLA-flag ones) is compared across processes, so it also carries any change in load.
    """
    rows = []
    for size in sorted({j["spec"]["case"]["image_size"] for j in ok_jobs(jobs)}):
        at_size = [j for j in ok_jobs(jobs) if j["spec"]["case"]["image_size"] == size]
        plain = next((j for j in at_size if not j["spec"]["xla_flags"]
                      and OURS_PLAIN in j["summary"]), None)
        for job in at_size:
            ours = {v["name"] for v in job["spec"]["jax"]}
            for name, stats in job["summary"].items():
                if name not in ours:
                    continue
                base = plain["summary"][OURS_PLAIN] if plain else None
                rows.append([size, name, _flags(job), f"{stats['median_s']:.3f}",
                             _fmt(base["median_s"] / stats["median_s"] if base else None, 3),
                             _fmt(base["min_s"] / stats["min_s"] if base else None, 3),
                             "same" if job is plain else "other (load may differ)"])
    return _table(["px", "our step", "XLA flags", "median s", "speed-up vs plain f32 (medians)",
                   "(fastest steps)", "process"], rows)


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
    arch = {"resnet50": "ResNet-50"}.get(case.get("arch", "resnet50"), case.get("arch"))
    return (f"{arch} at {case['image_size']} px, projector {case['projector']}, global "
            f"batch {case['batch']} pairs, XLA flags '{_flags(job)}'.\n\n" + _table(
                ["devices (simulated)", "median s (IQR)", "steps", "images/s",
                 "time / 1 device", "compile s"], rows))


def comm_table(comm_job, scaling_job) -> str:
    """Floats a device sends per step, and the CPU step time of the same reducers."""
    if not comm_job or "error" in comm_job:
        return "not measured"
    exact = comm_job["params"]
    step = {}
    if scaling_job and "error" not in scaling_job:
        step = {k: v["median_s"] for k, v in scaling_job["summary"].items()}
    most = max(scaling_job["spec"]["devices"]) if step else None
    rows = [["exact pmean", f"{exact:,.0f}", f"{exact * 4 / 1e6:.1f}", "1.0",
             _fmt(step.get(f"{most} dev"), 3)]]
    for rank, floats in comm_job["powersgd"].items():
        rows.append([f"PowerSGD rank {rank}", f"{floats:,.0f}", f"{floats * 4 / 1e6:.2f}",
                     f"{exact / floats:.0f}", _fmt(step.get(f"{most} dev PowerSGD r{rank}"), 3)])
    return _table(["reducer", "floats / device / step", "MB (float32)", "compression",
                   f"CPU step s ({most} simulated devices, scaling model)"], rows)


def model_table(model: Dict[str, Any]) -> str:
    steps = model["steps"]
    names = list(next(iter(steps.values())))
    rows = [[link] + [f"{1e3 * r[n]['comm_s']:.1f} / {1e3 * r[n]['step_s']:.0f}" for n in names]
            for link, r in steps.items()]
    return (f"Compute per step: {1e3 * model['compute_s']:.0f} ms per GPU ({model['source']}). "
            f"Cells: all-reduce ms / step ms, {comm.GPUS} GPUs, float32 gradients, no overlap."
            "\n\n" + _table(["interconnect"] + names, rows))


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


def render(results: Dict[str, Any], command: str) -> str:
    """The whole of docs/benchmarks.md."""
    m, parts = results["machine"], []
    parts.append("# Benchmarks\n\nGenerated by `scripts/benchmark.py`; do not edit by hand, rerun:"
                 f"\n\n```\n{command}\n```\n\n"
                 f"Machine: {m['processor']}, {m['cpu_count']} cores ({m['cpu_flags']}), "
                 f"jax {m['jax']}, torch {m.get('torch', 'n/a')}, Python {m['python']}. "
                 f"Load average {m['load_avg_start']:.1f} at the start, {m['load_avg_end']:.1f} "
                 f"at the end; the run took {results['wall_s'] / 60:.1f} min.")
    if "throughput" in results:
        parts.append("## 1. Train step: ours against PyTorch\n\nThe full Barlow Twins step (on-device "
                     "flip + normalisation, ResNet-50, projector, loss, LARS) on one device, the same "
                     "batch and threads on both sides; each process alternates its runners step by "
                     "step (rotating the order), after one warm-up step each. PyTorch f32 runs in both "
                     "of oneDNN's layouts (NCHW and channels_last); ratios are to the faster of the two "
                     "in the same process, and below 1 mean ours is faster. PyTorch's two OpenMP threads suffer far more than XLA's from other "
                     "jobs on the cores (one busy core elsewhere can make its step several times "
                     "slower), so under load the medians favour us; the fastest-step ratio and the "
                     "load average are printed to judge that.\n\n" + throughput_table(results["throughput"]))
        parts.append("### Levers\n\n" + lever_table(results["throughput"]))
        parts.append("## 2. Model FLOPs utilisation\n\nMFU = step FLOPs (XLA cost analysis of the "
                     "compiled f32 step) / median step time / the best matmul rate measured in the "
                     "same process.\n\n" + mfu_table(results["throughput"]))
    if "scaling" in results:
        parts.append("## 3. Scaling over simulated devices (fixed global batch)\n\n"
                     + scaling_table(results["scaling"]))
    if "comm" in results:
        parts.append("## 4. Exact vs PowerSGD\n\nFloats are for the earlier work's model (ResNet-50 "
                     "at 244 px, projector 8192-2048-4096-8192); CPU step times are the scaling "
                     "section's smaller model on simulated devices, where an all-reduce is a memory "
                     "copy, so they show PowerSGD's compute cost only.\n\n"
                     + comm_table(results["comm"], results.get("scaling")))
        if results.get("model"):
            parts.append("### On paper: 8 GPUs\n\n" + comm.ASSUMPTIONS + "\n\n"
                         + model_table(results["model"]))
    if "pipeline" in results:
        parts.append("## 5. Input pipeline against the step\n\n" + pipeline_table(
            results["pipeline"], _consumers(results)))
    parts.append("## Peak host memory and time per job\n\n" + memory_table(results))
    return "\n\n".join(parts) + "\n"
