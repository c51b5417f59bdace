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

import dataclasses
import json
import os
import shlex
import sys

from absl import app, flags

from bt_jax.benchmark import plan, report

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


class _TupleParser(flags.ListParser):
    """A comma list as a tuple (empty items dropped): of ``item``, from ``allowed`` if set."""

    def __init__(self, item=str, allowed=None):
        super().__init__()
        self._item, self._allowed = item, allowed

    def parse(self, argument):
        if isinstance(argument, tuple):
            return argument
        values = tuple(self._item(w) for w in super().parse(argument) if w)
        bad = [v for v in values if self._allowed is not None and v not in self._allowed]
        if bad:
            raise ValueError(f"{bad} not in {self._allowed}")
        return values

    def flag_type(self) -> str:
        return f"comma separated list of {self._item.__name__}"


def _define_tuple(name, default, help, item=str, allowed=None) -> None:
    flags.DEFINE(_TupleParser(item, allowed), name, tuple(default), help,
                 serializer=flags.CsvListSerializer(","))


def _define_step_options(d) -> None:
    _define_tuple("sections", d.sections,
                  "comma list of throughput,facenet,powersgd,scaling,pipeline")
    _define_tuple("sizes", d.sizes, "image sizes; levers at the first", int)
    _define_tuple("batches", d.batches, "pairs per step, one per size", int)
    flags.DEFINE_string("projector", d.projector, None)
    flags.DEFINE_string("arch", d.arch, "'resnet50', or 'tiny' for a smoke test")
    flags.DEFINE_integer("rounds", d.rounds, "timed steps per runner")
    _define_tuple("levers", d.levers,
                  f"subset of {plan.LEVERS}; 'ynn': also time our step with ynn off; "
                  "'malloc': also with the C library's malloc instead of tcmalloc; "
                  "'fused' (0.99x on the reference CPU) and 'nodonate' cost a compile each",
                  allowed=plan.LEVERS)
    flags.DEFINE_enum("bf16", d.bf16, ("auto", "on", "off"),
                      "bf16 runners (ours bf16, PyTorch bf16 autocast); auto: where the CPU "
                      "has AVX-512 BF16 or AMX")
    flags.DEFINE_integer("torch_bf16_rounds", d.torch_bf16_rounds,
                         "at most this many timed PyTorch bf16 autocast steps (0: --rounds)")
    flags.DEFINE_integer("threads", d.threads, "PyTorch threads (0: cores)")
    flags.DEFINE_enum("platform", d.platform, ("cpu", "gpu"), None)
    flags.DEFINE_string("xla_flags", d.xla_flags,
                        "more XLA flags for every job (the shell's XLA_FLAGS are ignored)")
    _define_tuple("facenet_steps", d.facenet_steps, None, allowed=plan.FACENET_STEPS)
    flags.DEFINE_integer("facenet_batch", d.facenet_batch,
                         "pairs, whole Inception-ResNet-v1 step")
    flags.DEFINE_integer("trunk_batch", d.trunk_batch, "pairs, cached-trunk step")
    _define_tuple("facenet_ynn_off", d.facenet_ynn_off, "FaceNet steps also timed with ynn off",
                  allowed=plan.FACENET_STEPS)
    flags.DEFINE_string("facenet_arch", d.facenet_arch,
                        "'' : the recipe's; 'tiny_inception' for a smoke test")
    flags.DEFINE_integer("facenet_size", d.facenet_size,
                         "0: the recipe's (160); the tiny variant needs >= 75")


def _define_other_options(d) -> None:
    flags.DEFINE_integer("scaling_size", d.scaling_size, None)
    flags.DEFINE_integer("scaling_batch", d.scaling_batch, None)
    flags.DEFINE_string("scaling_projector", d.scaling_projector, None)
    _define_tuple("scaling_devices", d.scaling_devices, None, int)
    flags.DEFINE_integer("scaling_rounds", d.scaling_rounds, None)
    _define_tuple("powersgd_ranks", d.powersgd_ranks, None, int)
    flags.DEFINE_integer("powersgd_step_rank", d.powersgd_step_rank,
                         "PowerSGD rank whose step is timed against exact; 0: none")
    flags.DEFINE_integer("powersgd_size", d.powersgd_size, None)
    flags.DEFINE_integer("powersgd_devices", d.powersgd_devices,
                         "simulated devices of the exact-vs-PowerSGD step; 0: no step")
    flags.DEFINE_integer("powersgd_batch", d.powersgd_batch, "pairs per device")
    flags.DEFINE_integer("powersgd_rounds", d.powersgd_rounds, None)
    flags.DEFINE_string("data_dir", d.data_dir, "MLFW root (default ../shared/data/mlfw)")
    flags.DEFINE_integer("pipeline_batch", d.pipeline_batch, None)
    flags.DEFINE_integer("pipeline_batches", d.pipeline_batches, None)
    flags.DEFINE_float("job_timeout_s", d.job_timeout_s,
                       "give up on a job (one process) after this many seconds")
    flags.DEFINE_string("gpu_result", "", "a gpu_bench.sh JSON: its throughput row "
                        "replaces the assumed GPU compute time of the 8-GPU model")


_define_step_options(plan.Options())
_define_other_options(plan.Options())
flags.DEFINE_bool("quick", False, plan.quick.__doc__.split(".")[0])
flags.DEFINE_bool("estimate", False, "print the time estimate and stop")
flags.DEFINE_string("render", "", "only rebuild the markdown from this JSON")
flags.DEFINE_string("json", os.path.join(_REPO, "docs", "benchmarks.json"), None)
flags.DEFINE_string("md", os.path.join(_REPO, "docs", "benchmarks.md"),
                    "markdown output; '' prints only")


def options_from(values=FLAGS) -> plan.Options:
    fields = {f: values[f].value for f in plan.Options.__dataclass_fields__
              if f in values and f != "gpu_result"}
    options = plan.Options(**fields)
    if values.quick:
        options = plan.quick(options)
    if len(options.batches) != len(options.sizes):
        raise app.UsageError(
            f"--batches {options.batches} needs one batch per size {options.sizes}")
    if values.gpu_result:
        with open(values.gpu_result) as f:
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
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}: every option is a --flag")
    out_json = FLAGS.json
    if FLAGS.render:
        with open(FLAGS.render) as f:
            results = json.load(f)
        out_json = ""  # the JSON is the input: leave it as it is
    elif FLAGS.estimate:
        options = options_from()
        print_estimate(dataclasses.replace(options, fast_cpu_default=plan.probe_fast_cpu(),
                                           malloc_default=plan.probe_malloc()))
        return
    else:
        results = plan.run_all(options_from())
        results["command"] = ("python scripts/benchmark.py " + " ".join(
            shlex.quote(a) for a in sys.argv[1:])).strip()
    markdown = report.render(results, results.get("command", "python scripts/benchmark.py"),
                             hand_written=report.hand_written_in(FLAGS.md))
    print(markdown)
    for path, text in ((out_json, json.dumps(results, indent=1)), (FLAGS.md, markdown)):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(path, "w") as f:
                f.write(text + ("\n" if not text.endswith("\n") else ""))


if __name__ == "__main__":
    app.run(main)
