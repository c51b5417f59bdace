"""Photos to embeddings: faces per second of detection + alignment + embedding on 640x480
photos, and the detection step alone, ours against the ``mtcnn`` package (TensorFlow).

  python scripts/benchmark_detect.py --config configs/mlfw_facenet_deep.py \\
      --workdir runs/mlfw_facenet_deep --data_dir ../shared/data/mlfw/val \\
      --package_python <venv with tensorflow and mtcnn>/bin/python --out detect_benchmark.json
  python scripts/benchmark_detect.py --init converted_weights/facenet_casia  # configs/facenet.py

The photos are composites of --data_dir's crops (1-4 faces each), or, without
--data_dir, scikit-image's astronaut pasted into 640x480 noise (bt_jax/benchmark/detect.py).
Every step is the median of --rounds passes over all the photos after an untimed one.
With --package_python (a Python with TensorFlow and mtcnn==1.0.0), the photos are saved
as PNG and that Python times the package's detect_faces on them right after ours
(scripts/compare_mtcnn_package.py --time_photos): the ratio of the two detection times is
a comparison on one CPU in one run. Prints one JSON line and a markdown table.
"""

from bt_jax.runtime.devices import define_set_up_flags, set_up_cpu
from bt_jax.runtime.logs import quiet

set_up_cpu(8)  # first: tcmalloc (a re-exec), 8 simulated CPU devices, the fast CPU path
quiet()

import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
define_set_up_flags()
_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "facenet.py"),
                                          "The embedder's config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained run's weights (as identify.py).")
_INIT = flags.DEFINE_string("init", None, "Else: 'scratch' or converted weights.")
_DATA = flags.DEFINE_string("data_dir", None, "Aligned crops <identity>/<image> for the "
                            "composites; without it, scikit-image's astronaut.")
_PHOTOS = flags.DEFINE_integer("photos", 48, "640x480 photos per pass (48: about 120 faces, "
                                "two embedding batches of 64).")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed passes (the median is reported).")
_SEED = flags.DEFINE_integer("seed", 0, "The photos.")
_PACKAGE = flags.DEFINE_string("package_python", None, "A Python with mtcnn==1.0.0: time "
                               "its detection on the same photos.")
_SAVE = flags.DEFINE_string("save_photos", None, "Folder for the photos as PNG (default: a "
                            "temporary one, with --package_python).")
_OUT = flags.DEFINE_string("out", None, "Write the JSON record here too.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from bt_jax.benchmark import detect as bench
    from bt_jax.identify.app import network_embedder
    from bt_jax.identify.detect import Detector, Settings
    from bt_jax.runtime.logs import quiet_after_flags

    quiet_after_flags()
    config = _CONFIG.value
    if not (_WORKDIR.value or _INIT.value):
        sys.exit("error: give --workdir (a trained run) or --init (converted weights or "
                 "'scratch').")
    photos = (bench.composite_photos(_DATA.value, _PHOTOS.value, _SEED.value) if _DATA.value
              else bench.astronaut_photos(_PHOTOS.value, _SEED.value))
    embedder = network_embedder(config, workdir=_WORKDIR.value, init=_INIT.value)
    load_before = os.getloadavg()[0]  # other work on the machine skews every figure
    detector = Detector(Settings.from_config(config.detect))
    times = bench.measure(detector, embedder, photos, config.data.crop_size,
                          config.data.image_size, _ROUNDS.value, config.detect.align_from)
    package = None
    if _PACKAGE.value:
        with tempfile.TemporaryDirectory() as scratch:
            folder = _SAVE.value or scratch
            bench.save_photos(photos, folder)
            done = subprocess.run([_PACKAGE.value, os.path.join(REPO, "scripts",
                                                                "compare_mtcnn_package.py"),
                                   "--time_photos", folder, "--rounds", str(_ROUNDS.value)],
                                  capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"error: the package's timing failed:\n{done.stderr[-3000:]}")
            package = json.loads(done.stdout.strip().splitlines()[-1])
    elif _SAVE.value:
        bench.save_photos(photos, _SAVE.value)
    weights = _WORKDIR.value or _INIT.value
    record = bench.report(times, len(photos), config.eval.batch_size, package,
                          source=(f"composites of {_DATA.value}" if _DATA.value
                                  else "scikit-image astronaut"),
                          embedder=(f"{config.model.arch} {config.data.image_size} px "
                                    f"({os.path.basename(os.path.normpath(weights))})"),
                          load_avg_1min=[round(load_before, 2), round(os.getloadavg()[0], 2)],
                          rounds=_ROUNDS.value, seconds={k: round(v, 3) for k, v in
                                                         times.items() if k != "faces"})
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(record, f, indent=1)
    print(json.dumps(record))
    print(bench.markdown(record))


if __name__ == "__main__":
    app.run(main)
