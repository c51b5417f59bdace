"""How far MTCNN's alignment of a face is from MLFW's own: each MLFW crop is padded, its
landmarks found, and the similarity that would re-align it measured (0 px, scale 1 when
MTCNN agrees with MLFW). Per way of aligning (five points or the eyes) and with O-Net's
landmarks alone or averaged with the mirrored face's (docs/detection.md).

  python scripts/alignment_study.py --data_dir ../shared/data/mlfw/train --count 1500 \
      --out alignment_train.json

Tune on train; --labels (val's 'masked|unmasked <identity>/<file>' lines) also splits the
figures by masked and unmasked faces.
"""

import dataclasses
import json
import os
import sys

import numpy as np
from absl import app, flags
from PIL import Image
from tqdm import tqdm

from bt_jax.config import base_config
from bt_jax.data.folder import scan_folder
from bt_jax.identify import study
from bt_jax.identify.detect import Detector, Settings
from bt_jax.runtime.logs import quiet
from bt_jax.runtime.workdir import check_output_file

quiet()
_DATA = flags.DEFINE_string("data_dir", None, "MLFW crops: <identity>/<Name>_SSSS_VVVV.")
_COUNT = flags.DEFINE_integer("count", 1500, "Crops drawn at random (all if fewer).")
_SEED = flags.DEFINE_integer("seed", 0, "Which crops.")
_LABELS = flags.DEFINE_string("labels", None, "Optional: lines 'masked|unmasked <file>'.")
_OUT = flags.DEFINE_string("out", None, "JSON file of the results.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        if not (_DATA.value and _OUT.value):
            raise ValueError("give --data_dir and --out.")
        check_output_file(_OUT.value, "--out")
        records = scan_folder(_DATA.value, min_images_per_identity=1)
        labels = study.read_labels(_LABELS.value, _DATA.value) if _LABELS.value else {}
    except (ValueError, FileNotFoundError, OSError) as e:
        sys.exit("error: " + " ".join(f"{type(e).__name__}: {e}".split()))
    rng = np.random.default_rng(_SEED.value)
    picked = sorted(rng.choice(len(records), min(_COUNT.value, len(records)), replace=False))
    settings = Settings.from_config(base_config().detect)
    detectors = {f"mirror={m}": Detector(dataclasses.replace(settings, mirror_landmarks=m))
                 for m in (False, True)}
    found = {name: [] for name in detectors}
    kinds = []
    for i in tqdm(picked, desc="crops"):
        crop = np.asarray(Image.open(records[i].path).convert("RGB"))
        kinds.append(labels.get(os.path.realpath(records[i].path), "all"))
        for name, detector in detectors.items():
            found[name].append(study.on_crop(detector, crop, crop.shape[0] // 2))
    results = study.alignment_shifts_by_kind(found, kinds, crop.shape[0])
    with open(_OUT.value, "w") as f:
        json.dump({"crops": len(picked), "data_dir": _DATA.value, "results": results}, f,
                  indent=1)
    for kind, by_mirror in results.items():
        for name, by_how in by_mirror.items():
            for how, r in by_how.items():
                print(f"{kind:9s} {name:13s} {how:5s} {r['crops']:5d} found  shift "
                      f"{r['shift_mean']:.2f} px (median {r['shift_median']:.2f}, p90 "
                      f"{r['shift_p90']:.2f})  scale {r['scale_mean']:.3f} sd "
                      f"{r['scale_sd']:.3f}  angle sd {r['angle_sd']:.2f}")


if __name__ == "__main__":
    app.run(main)
