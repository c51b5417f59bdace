"""Input pipeline throughput against the train step's consumption, in one run.

  python scripts/benchmark_data.py --json runs/bench_data.json
  python scripts/benchmark_data.py --sizes 112 --source tfds --step_batch 16

For each image size: (1) the grain pipeline alone (``StreamingPairs`` on MLFW train:
read, decode, resize, batch) in images per second; (2) the real Barlow Twins train
step of ``configs/mlfw.py`` (ResNet-50, projector 2048-4096-8192, LARS, from-scratch
init) under pmap over 8 simulated CPU devices, fed a fixed batch already on the
devices, in images consumed per second (2 views per pair); (3) the step fed by the
pipeline (``parallel.prefetch_to_devices``), both competing for the same cores. The ratio
(1)/(2) is the headroom; the target is >= 4x.
"""

from bt_jax.runtime.devices import simulate_cpu_devices

simulate_cpu_devices(8)  # before jax is imported

import json  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import jax  # noqa: E402
from absl import app, flags  # noqa: E402

from bt_jax.runtime import parallel  # noqa: E402
from bt_jax.train import reducers  # noqa: E402
from bt_jax.train.optim import make_optimizer  # noqa: E402
from bt_jax.train.state import initial_state  # noqa: E402
from bt_jax.train.step import compile_steps  # noqa: E402
from bt_jax.benchmark.measure import pipeline_rate  # noqa: E402
from bt_jax.config import base_config  # noqa: E402
from bt_jax.data import sources  # noqa: E402
from bt_jax.data.pipeline import StreamingPairs  # noqa: E402

_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mlfw"
_SIZES = flags.DEFINE_list("sizes", ["112", "244"], "Image sizes to measure.")
_SOURCE = flags.DEFINE_enum("source", "folder", ["folder", "tfds"], "Data source.")
_DATA_DIR = flags.DEFINE_string("data", str(_DATA), "MLFW root holding train/ and val/.")
_BATCH = flags.DEFINE_integer("pipeline_batch", 256, "Pairs per pipeline batch.")
_BATCHES = flags.DEFINE_integer("pipeline_batches", 10, "Timed pipeline batches per size.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Decode threads; 0 = 2 per core.")
_STEP_BATCH = flags.DEFINE_integer("step_batch", 16, "Global batch (pairs) of the train step.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed train steps per size (after compiling).")
_ARCH = flags.DEFINE_string("arch", "resnet50", "Backbone of the step: 'resnet50' or 'tiny'.")
_PROJECTOR = flags.DEFINE_string("projector", "2048-4096-8192", "Projector sizes.")
_JSON = flags.DEFINE_string("json", None, "Write the results here as JSON.")
_WORKDIR = flags.DEFINE_string("workdir", os.path.join(tempfile.gettempdir(), "bt_jax_bench_data"),
                               "Scratch folder (the prepared TFDS data goes here).")


def _config(size: int):
    """configs/mlfw.py from scratch, at ``size`` (pool window 4 at 112: 1x1 output)."""
    config = base_config()
    config.init = "scratch"
    config.data.source = _SOURCE.value
    config.data.train_dir = os.path.join(_DATA_DIR.value, "train")
    config.data.val_dir = os.path.join(_DATA_DIR.value, "val")
    config.data.tfds_dir = os.path.join(_WORKDIR.value, "tfds")
    config.data.image_size = size
    config.data.workers = _WORKERS.value
    config.model.arch = _ARCH.value
    config.model.projector = _PROJECTOR.value
    config.model.pool_window = 7 if size >= 224 else 4
    config.optim.batch_size = _STEP_BATCH.value
    config.train.progress = False
    return config


def step_rates(config, stream: StreamingPairs) -> tuple[float, float]:
    """(images/s of the step on a fixed device batch, images/s fed by the pipeline)."""
    mesh = parallel.device_mesh(config.num_devices)
    tx, _ = make_optimizer(config, steps_per_epoch=100)
    reducer = reducers.make_reducer(config)
    steps = compile_steps(config, tx, reducer)
    state = parallel.replicate(initial_state(config, tx, reducer), mesh)
    feed = parallel.prefetch_to_devices(
        stream.batches(0, config.optim.batch_size, devices=mesh.devices.size), mesh,
        config.data.prefetch)
    fixed = next(feed)
    state, metrics = steps.train(state, fixed)               # compiles
    jax.block_until_ready(metrics)
    images = 2 * config.optim.batch_size * _STEPS.value
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = steps.train(state, fixed)
    jax.block_until_ready(metrics)
    alone = images / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(_STEPS.value):
        state, metrics = steps.train(state, next(feed))
    jax.block_until_ready(metrics)
    return alone, images / (time.perf_counter() - start)


def measure(size: int) -> dict:
    config = _config(size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # the one identity with a single image
        source = sources.open_split(config, "train", _WORKDIR.value)
    stream = StreamingPairs(source, size, seed=0, pair_sampler="all_pairs",
                            workers=_WORKERS.value)
    decoded = pipeline_rate(stream, _BATCH.value, _BATCHES.value)
    print(f"{size}px pipeline: {decoded:.0f} images/s ({stream.workers} threads)", flush=True)
    step, fed = step_rates(config, stream)
    result = {"image_size": size, "source": _SOURCE.value, "cores": os.cpu_count(),
              "decode_threads": stream.workers, "pipeline_images_per_s": round(decoded, 1),
              "step_images_per_s": round(step, 2), "fed_step_images_per_s": round(fed, 2),
              "headroom": round(decoded / step, 1), "step_global_batch": _STEP_BATCH.value,
              "devices": config.num_devices, "backend": jax.default_backend(),
              "arch": _ARCH.value, "projector": _PROJECTOR.value}
    print(f"{size}px step: {step:.2f} images/s alone, {fed:.2f} fed by the pipeline; "
          f"headroom {decoded / step:.0f}x", flush=True)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    results = [measure(int(size)) for size in _SIZES.value]
    print(json.dumps(results, indent=2))
    if _JSON.value:
        pathlib.Path(_JSON.value).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(_JSON.value).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
