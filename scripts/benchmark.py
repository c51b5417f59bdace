"""Performance of the Barlow Twins step: ours vs PyTorch, FaceNet, MFU, scaling, PowerSGD.

  python scripts/benchmark.py                      # the full run (< 20 min on a quiet 2-core CPU)
  python scripts/benchmark.py --quick              # < 5 min: 112 px, cached-trunk step
  python scripts/benchmark.py --sections facenet --facenet_steps trunk --rounds 10

Writes the markdown to --md (docs/benchmarks.md) and everything measured to --json.
Each measurement runs in its own process (bt_jax/benchmark/jobs.py): XLA flags are
read once per process, and the benchmark sets them per job (the default CPU path, or
ynn off where it compares the two); the shell's XLA_FLAGS are not used (--xla_flags adds
flags to every job). See bt_jax/benchmark/ for what each section measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys

from bt_jax.benchmark import plan, report

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ints(text: str):
    return tuple(int(x) for x in text.split(",") if x)


def _words(text: str):
    return tuple(x for x in text.split(",") if x)


def _choices(allowed):
    def parse(text: str):
        words = _words(text)
        bad = [w for w in words if w not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {allowed}")
        return words
    return parse


def _add_step_options(p, d) -> None:
    p.add_argument("--sections", type=_words, default=d.sections,
                   help="comma list of throughput,facenet,powersgd,scaling,pipeline")
    p.add_argument("--sizes", type=_ints, default=d.sizes, help="image sizes; levers at the first")
    p.add_argument("--batches", type=_ints, default=d.batches, help="pairs per step, one per size")
    p.add_argument("--projector", default=d.projector)
    p.add_argument("--arch", default=d.arch, help="'resnet50', or 'tiny' for a smoke test")
    p.add_argument("--rounds", type=int, default=d.rounds, help="timed steps per runner")
    p.add_argument("--levers", type=_choices(plan.LEVERS), default=d.levers,
                   help=f"subset of {plan.LEVERS}; 'ynn': also time our step with ynn off; "
                        "'malloc': also with the C library's malloc instead of tcmalloc; "
                        "'fused' (0.99x on the reference CPU) and 'nodonate' cost a compile each")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default=d.bf16,
                   help="bf16 runners (ours bf16, PyTorch bf16 autocast); auto: where the CPU "
                        "has AVX-512 BF16 or AMX")
    p.add_argument("--torch_bf16_rounds", type=int, default=d.torch_bf16_rounds,
                   help="at most this many timed PyTorch bf16 autocast steps (0: --rounds)")
    p.add_argument("--threads", type=int, default=d.threads, help="PyTorch threads (0: cores)")
    p.add_argument("--platform", choices=("cpu", "gpu"), default=d.platform)
    p.add_argument("--xla_flags", default=d.xla_flags,
                   help="more XLA flags for every job (the shell's XLA_FLAGS are ignored)")
    p.add_argument("--facenet_steps", type=_choices(plan.FACENET_STEPS), default=d.facenet_steps)
    p.add_argument("--facenet_batch", type=int, default=d.facenet_batch,
                   help="pairs, whole Inception-ResNet-v1 step")
    p.add_argument("--trunk_batch", type=int, default=d.trunk_batch,
                   help="pairs, cached-trunk step")
    p.add_argument("--facenet_ynn_off", type=_choices(plan.FACENET_STEPS),
                   default=d.facenet_ynn_off, help="FaceNet steps also timed with ynn off")
    p.add_argument("--facenet_arch", default=d.facenet_arch,
                   help="'' : the recipe's; 'tiny_inception' for a smoke test")
    p.add_argument("--facenet_size", type=int, default=d.facenet_size,
                   help="0: the recipe's (160); the tiny variant needs >= 75")


def _add_other_options(p, d) -> None:
    p.add_argument("--scaling_size", type=int, default=d.scaling_size)
    p.add_argument("--scaling_batch", type=int, default=d.scaling_batch)
    p.add_argument("--scaling_projector", default=d.scaling_projector)
    p.add_argument("--scaling_devices", type=_ints, default=d.scaling_devices)
    p.add_argument("--scaling_rounds", type=int, default=d.scaling_rounds)
    p.add_argument("--powersgd_ranks", type=_ints, default=d.powersgd_ranks)
    p.add_argument("--powersgd_step_rank", type=int, default=d.powersgd_step_rank,
                   help="PowerSGD rank whose step is timed against exact; 0: none")
    p.add_argument("--powersgd_size", type=int, default=d.powersgd_size)
    p.add_argument("--powersgd_devices", type=int, default=d.powersgd_devices,
                   help="simulated devices of the exact-vs-PowerSGD step; 0: no step")
    p.add_argument("--powersgd_batch", type=int, default=d.powersgd_batch, help="pairs per device")
    p.add_argument("--powersgd_rounds", type=int, default=d.powersgd_rounds)
    p.add_argument("--data_dir", default=d.data_dir, help="MLFW root (default ../shared/data/mlfw)")
    p.add_argument("--pipeline_batch", type=int, default=d.pipeline_batch)
    p.add_argument("--pipeline_batches", type=int, default=d.pipeline_batches)
    p.add_argument("--job_timeout_s", type=float, default=d.job_timeout_s,
                   help="give up on a job (one process) after this many seconds")
    p.add_argument("--gpu_result", default="", help="a gpu_bench.sh JSON: its throughput row "
                   "replaces the assumed GPU compute time of the 8-GPU model")


def parse(argv) -> argparse.Namespace:
    d = plan.Options()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _add_step_options(p, d)
    _add_other_options(p, d)
    p.add_argument("--quick", action="store_true", help=plan.quick.__doc__.split(".")[0])
    p.add_argument("--estimate", action="store_true", help="print the time estimate and stop")
    p.add_argument("--render", default="", help="only rebuild the markdown from this JSON")
    p.add_argument("--json", default=os.path.join(_REPO, "docs", "benchmarks.json"))
    p.add_argument("--md", default=os.path.join(_REPO, "docs", "benchmarks.md"),
                   help="markdown output; '' prints only")
    return p.parse_args(argv)


def options_from(args) -> plan.Options:
    fields = {f: getattr(args, f) for f in plan.Options.__dataclass_fields__ if hasattr(args, f)}
    options = plan.Options(**{k: v for k, v in fields.items() if k != "gpu_result"})
    if args.quick:
        options = plan.quick(options)
    if len(options.batches) != len(options.sizes):
        raise SystemExit(f"--batches {options.batches} needs one batch per size {options.sizes}")
    if args.gpu_result:
        with open(args.gpu_result) as f:
            options.gpu_result = json.load(f)["throughput"][0]
    return options


def print_estimate(options: plan.Options) -> None:
    per_section = plan.estimate(options)
    print(f"estimated {sum(per_section.values()) / 60:.1f} min on a quiet 2-core machine like "
          "the reference: " + ", ".join(f"{k} {v / 60:.1f}" for k, v in per_section.items()))
    for section, specs in plan.planned_specs(options).items():
        for spec in specs:
            print(f"  {section:10s} {spec.get('label', spec['kind']):30s} "
                  f"{plan.job_estimate_s(spec):6.0f} s")


def main(argv) -> None:
    args = parse(argv)
    if args.render:
        with open(args.render) as f:
            results = json.load(f)
        args.json = ""  # the JSON is the input: leave it as it is
    elif args.estimate:
        options = options_from(args)
        print_estimate(dataclasses.replace(options, fast_cpu_default=plan.probe_fast_cpu(),
                                           malloc_default=plan.probe_malloc()))
        return
    else:
        results = plan.run_all(options_from(args))
        results["command"] = ("python scripts/benchmark.py " + " ".join(
            shlex.quote(a) for a in argv)).strip()
    markdown = report.render(results, results.get("command", "python scripts/benchmark.py"))
    print(markdown)
    for path, text in ((args.json, json.dumps(results, indent=1)), (args.md, markdown)):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text + ("\n" if not text.endswith("\n") else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
