"""Step time of the real train step with PowerSGD vs the exact all-reduce, same batch.

  python scripts/benchmark_powersgd.py --json runs/bench_powersgd.json
  python scripts/benchmark_powersgd.py --arch tiny --image_size 64 --projector 512-512 \\
      --batch 128 --json runs/bench_tiny.json

Both reducers run the full Barlow Twins step (``bt_jax.train.step.train_step``: forward,
backward, reducer, LARS) under pmap over 8 simulated CPU devices. After warm-up the
steps alternate between the two (the order flips every round), so a slow patch on a
shared machine hits both; the reported figure is the ratio of the medians.
"""

from bt_jax.runtime.devices import simulate_cpu_devices

simulate_cpu_devices(8)  # before jax is imported

import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from bt_jax.runtime import parallel  # noqa: E402
from bt_jax.train import reducers  # noqa: E402
from bt_jax.train.optim import make_optimizer  # noqa: E402
from bt_jax.train.state import initial_state  # noqa: E402
from bt_jax.train.step import compile_steps  # noqa: E402
from bt_jax.data.pairs import device_layout  # noqa: E402
from bt_jax.config import base_config  # noqa: E402
from bt_jax.train.powersgd import compression_stats  # noqa: E402

_ARCH = flags.DEFINE_string("arch", "resnet50", "Backbone: 'resnet50' or 'tiny'.")
_SIZE = flags.DEFINE_integer("image_size", 244, "Input size (244 gives 8192 features).")
_PROJECTOR = flags.DEFINE_string("projector", "2048-4096-8192", "Projector sizes.")
_POOL = flags.DEFINE_integer("pool_window", 7, "Final average-pool window.")
_BATCH = flags.DEFINE_integer("batch", 8, "Global batch (pairs), split over 8 devices.")
_RANK = flags.DEFINE_integer("rank", 4, "PowerSGD rank.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per reducer after compiling.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per reducer (median reported).")
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")


def _config(reducer: str):
    """The base config shrunk to the benchmarked model; PowerSGD from the first step."""
    config = base_config()
    config.init = "scratch"
    config.model.arch = _ARCH.value
    config.model.pool_window = _POOL.value
    config.model.projector = _PROJECTOR.value
    config.data.image_size = _SIZE.value
    config.optim.batch_size = _BATCH.value
    config.optim.warmup_epochs = 1
    config.train.epochs = 2
    config.reducer.name = reducer
    config.reducer.powersgd.rank = _RANK.value
    config.reducer.powersgd.start_iter = 0  # time the compressed step, not the exact one
    return config


def _runner(reducer: str, mesh):
    """(one-step callable on fixed views, compile seconds, the host params)."""
    config = _config(reducer)
    tx, _ = make_optimizer(config, steps_per_epoch=10)
    red = reducers.make_reducer(config)
    steps = compile_steps(config, tx, red)
    host = initial_state(config, tx, red)
    state = {"s": parallel.replicate(host, mesh)}
    rng = np.random.default_rng(0)  # the same batch for both reducers
    shape = (config.optim.batch_size, config.data.image_size, config.data.image_size, 3)
    v1, v2 = (rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2))
    views = device_layout(np.stack([v1, v2], axis=1), config.num_devices)

    def step():
        start = time.perf_counter()
        state["s"], metrics = steps.train(state["s"], views)
        jax.block_until_ready((state["s"], metrics))
        return time.perf_counter() - start

    compile_s = step()
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), host.params)
    return step, compile_s, shapes  # shapes only: the host copy can be freed


def _measure():
    mesh = parallel.device_mesh(8)
    runners, compile_s, params = {}, {}, None
    for name in ("exact", "powersgd"):
        print(f"compiling and running the {name} step ...", file=sys.stderr, flush=True)
        runners[name], compile_s[name], params = _runner(name, mesh)
        for _ in range(_WARMUP.value):
            runners[name]()
    times = {name: [] for name in runners}
    for i in range(_STEPS.value):
        order = ("exact", "powersgd") if i % 2 == 0 else ("powersgd", "exact")
        for name in order:
            times[name].append(runners[name]())
        print(f"round {i + 1}/{_STEPS.value}: " + ", ".join(
            f"{k} {v[-1]:.3f}s" for k, v in times.items()), file=sys.stderr, flush=True)
    return times, compile_s, params


def _report(times, compile_s, params):
    medians = {name: statistics.median(t) for name, t in times.items()}
    stats = compression_stats(params, rank=_RANK.value, min_compression_rate=2.0)
    return {
        "model": {"arch": _ARCH.value, "image_size": _SIZE.value, "projector": _PROJECTOR.value,
                  "global_batch": _BATCH.value, "devices": 8,
                  "params": int(stats["exact_floats"])},
        "rank": _RANK.value, "cpu_count": os.cpu_count(),
        "step_s": times, "median_s": medians, "compile_s": compile_s,
        "ratio_powersgd_over_exact": medians["powersgd"] / medians["exact"],
        "floats_exact": stats["exact_floats"], "floats_powersgd": stats["powersgd_floats"],
        "compression_ratio": stats["ratio"],
        "compressed_tensors": len(stats["compressed"]),
        "uncompressed_tensors": len(stats["uncompressed"]),
    }


def _table(result) -> str:
    m = result["median_s"]
    rows = ["| reducer | median step (s) | floats sent / device / step |", "|---|---|---|",
            f"| exact pmean | {m['exact']:.3f} | {result['floats_exact']:,.0f} |",
            f"| PowerSGD rank {result['rank']} | {m['powersgd']:.3f} | "
            f"{result['floats_powersgd']:,.0f} |"]
    return "\n".join(rows) + (
        f"\n\nstep-time ratio PowerSGD / exact: {result['ratio_powersgd_over_exact']:.3f}; "
        f"compression {result['compression_ratio']:.2f}x")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    result = _report(*_measure())
    print(json.dumps(result["model"]))
    print(_table(result))
    if _JSON.value:
        os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
