"""Performance of the Barlow Twins step: ours vs PyTorch, MFU, scaling, PowerSGD, input.

  python scripts/benchmark.py                      # the full run (< 20 min on a quiet 2-core CPU)
  python scripts/benchmark.py --quick              # minutes: 112 px, fewer levers and rounds
  python scripts/benchmark.py --sections throughput --sizes 112 --batches 4 --levers bf16

Writes the markdown to --md (docs/benchmarks.md) and everything measured to --json.
Each measurement runs in its own process (bt_jax/benchmark/jobs.py): XLA flags are
read once per process. See bt_jax/benchmark/ for what each section measures.
"""

from __future__ import annotations

import argparse
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


def parse(argv) -> argparse.Namespace:
    d = plan.Options()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", type=_words, default=d.sections,
                   help="comma list of throughput,scaling,powersgd,pipeline")
    p.add_argument("--sizes", type=_ints, default=d.sizes, help="image sizes; levers at the first")
    p.add_argument("--batches", type=_ints, default=d.batches, help="pairs per step, one per size")
    p.add_argument("--projector", default=d.projector)
    p.add_argument("--arch", default=d.arch, help="'resnet50', or 'tiny' for a smoke test")
    p.add_argument("--rounds", type=int, default=d.rounds, help="timed steps per runner")
    p.add_argument("--levers", type=_words, default=d.levers, help=f"subset of {plan.LEVERS}")
    p.add_argument("--torch_bf16_rounds", type=int, default=d.torch_bf16_rounds,
                   help="also time PyTorch bf16 autocast at the first size, this many steps")
    p.add_argument("--threads", type=int, default=d.threads, help="PyTorch threads (0: cores)")
    p.add_argument("--platform", choices=("cpu", "gpu"), default=d.platform)
    p.add_argument("--scaling_size", type=int, default=d.scaling_size)
    p.add_argument("--scaling_batch", type=int, default=d.scaling_batch)
    p.add_argument("--scaling_projector", default=d.scaling_projector)
    p.add_argument("--scaling_devices", type=_ints, default=d.scaling_devices)
    p.add_argument("--scaling_rounds", type=int, default=d.scaling_rounds)
    p.add_argument("--powersgd_ranks", type=_ints, default=d.powersgd_ranks)
    p.add_argument("--powersgd_step_rank", type=int, default=d.powersgd_step_rank,
                   help="PowerSGD rank whose step is timed in the scaling job; 0: none")
    p.add_argument("--data_dir", default=d.data_dir, help="MLFW root (default ../shared/data/mlfw)")
    p.add_argument("--pipeline_batch", type=int, default=d.pipeline_batch)
    p.add_argument("--pipeline_batches", type=int, default=d.pipeline_batches)
    p.add_argument("--job_timeout_s", type=float, default=d.job_timeout_s,
                   help="give up on a job (one process) after this many seconds")
    p.add_argument("--gpu_result", default="", help="a gpu_bench.sh JSON: its throughput row "
                   "replaces the assumed GPU compute time of the 8-GPU model")
    p.add_argument("--quick", action="store_true", help="112 px only, bf16 lever, 3 rounds")
    p.add_argument("--render", default="", help="only rebuild the markdown from this JSON")
    p.add_argument("--json", default=os.path.join(_REPO, "docs", "benchmarks.json"))
    p.add_argument("--md", default=os.path.join(_REPO, "docs", "benchmarks.md"),
                   help="markdown output; '' prints only")
    return p.parse_args(argv)


def options_from(args) -> plan.Options:
    fields = {f: getattr(args, f) for f in plan.Options.__dataclass_fields__ if hasattr(args, f)}
    options = plan.Options(**{k: v for k, v in fields.items() if k != "gpu_result"})
    if args.quick:
        options.sizes, options.batches, options.levers = (112,), (2,), ("bf16",)
        options.rounds, options.scaling_devices, options.scaling_rounds = 3, (1, 8), 3
    if len(options.batches) != len(options.sizes):
        raise SystemExit(f"--batches {options.batches} needs one batch per size {options.sizes}")
    if args.gpu_result:
        with open(args.gpu_result) as f:
            options.gpu_result = json.load(f)["throughput"][0]
    return options


def main(argv) -> None:
    args = parse(argv)
    if args.render:
        with open(args.render) as f:
            results = json.load(f)
        args.json = ""  # the JSON is the input: leave it as it is
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
