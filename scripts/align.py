"""Ordinary photos -> aligned face crops ready for train.py, evaluate.py and identify.py.

  python scripts/align.py --photos my_photos/ --out my_crops/
  python scripts/align.py --photos my_photos/ --out my_crops/ --all_faces \
      --config.detect.min_face_size=40
  python scripts/align.py --crops --photos ../shared/data/mlfw/train --out data/mlfw_train_mtcnn

``--photos`` holds a sub-folder per person (<identity>/<image>). Each photo's largest
face (every face with --all_faces) is found with MTCNN, aligned to the 112x112
five-point template (config.data.crop_size) and written as
<out>/<identity>/<identity>_SSSS_VVVV.png; <out>/align.csv lists each face's box,
landmarks and score, and each photo without a face with the reason. Run it again to
resume: photos already listed are skipped. With --crops the photos are aligned crops
already (<Name>_SSSS_VVVV): each is re-aligned from MTCNN's landmarks and keeps its name.
MTCNN's weights come from the mtcnn 1.0.0 wheel (pip, once; --mtcnn_wheel takes one
brought by hand) into $BT_JAX_CACHE.
"""

from bt_jax.runtime.devices import define_set_up_flags, set_up_cpu
from bt_jax.runtime.logs import quiet, quiet_after_flags

set_up_cpu(1)  # first: tcmalloc (a re-exec) and the fast CPU path; detection uses one device
quiet()

import os  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bt_jax.config import base_config  # noqa: E402
from bt_jax.identify.align_photos import CSV_NAME, align_folder, list_photos  # noqa: E402
from bt_jax.identify.detect import Detector, Settings  # noqa: E402
from bt_jax.runtime.lock import FileLock, LockedError  # noqa: E402
from bt_jax.weights import download, mtcnn  # noqa: E402

define_set_up_flags()
_CONFIG = config_flags.DEFINE_config_dict("config", base_config(), "config.detect.* and "
                                          "config.data.crop_size.")
_PHOTOS = flags.DEFINE_string("photos", None, "Folder of <identity>/<image> photos.")
_OUT = flags.DEFINE_string("out", None, "Folder for the aligned crops and align.csv.")
_ALL = flags.DEFINE_bool("all_faces", False, "Keep every face of a photo, not the largest.")
_CROPS = flags.DEFINE_bool("crops", False, "The photos are already face crops named "
                           "<Name>_SSSS_VVVV (e.g. MLFW's): re-align each under its own name, "
                           "e.g. to train on both alignments (config.data.train_extra_dir).")
_WHEEL = flags.DEFINE_string("mtcnn_wheel", None, "The mtcnn 1.0.0 wheel, already downloaded.")


def run(config) -> None:
    if not _PHOTOS.value or not _OUT.value:
        raise ValueError("give --photos (a folder of <identity>/<image>) and --out.")
    if os.path.realpath(_PHOTOS.value) == os.path.realpath(_OUT.value):
        raise ValueError("--out must be another folder than --photos (the crops would be "
                         "read as photos next time).")
    settings = Settings.from_config(config.detect)
    list_photos(_PHOTOS.value)  # before anything is written
    os.makedirs(_OUT.value, exist_ok=True)
    with FileLock(os.path.join(_OUT.value, "align.lock"), f"the crop folder {_OUT.value}"):
        weights = mtcnn.load(mtcnn.fetch(wheel=_WHEEL.value, say=print))
        detector = Detector(settings, weights)
        done = align_folder(detector, _PHOTOS.value, _OUT.value, config.data.crop_size,
                            all_faces=_ALL.value, crops=_CROPS.value,
                            progress=lambda items: tqdm(items, desc="photos", unit="photo"))
    counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in
                       sorted(done.counts.items())) or "nothing new"
    print(f"{done.photos} photos, {done.already} done before; this run: {counts}; "
          f"{done.crops} crops written to {_OUT.value} "
          f"(boxes and landmarks: {os.path.join(_OUT.value, CSV_NAME)})")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_after_flags()
    try:
        run(_CONFIG.value)
    except (ValueError, FileNotFoundError, LockedError, download.FetchError) as e:
        sys.exit("error: " + " ".join(f"{type(e).__name__}: {e}".split()))


if __name__ == "__main__":
    app.run(main)
