"""How well MTCNN finds and aligns faces, masked and unmasked, and what that costs the
recogniser: composites of MLFW val crops with known landmarks (docs/detection.md).

  python scripts/detection_study.py --data_dir ../shared/data/mlfw/val \
      --labels docs/detection_mask_labels.txt --config configs/mlfw_facenet_deep.py \
      --workdir runs/mlfw_facenet_deep --out detection_study.json --save_canvases canvases/

1. Round trip: every val crop placed once at scales 1-2 and once at 0.5-1 (1-4 faces a
   640x480 canvas, rotation within +-20 degrees); the crops recovered by detection and
   alignment are embedded by the run's network and identified (source-disjoint 1-NN,
   the ``split`` protocol) against the original crops' accuracy.
2. Masked against unmasked: the images labelled by eye in --labels, each placed
   --repeats times at scales 0.5-2.
--save_canvases keeps part 2's canvases (PNG) with their true landmarks (truth.json),
for scripts/compare_mtcnn_package.py.
"""

from bt_jax.runtime.devices import define_set_up_flags, set_up_cpu
from bt_jax.runtime.logs import quiet, quiet_after_flags

set_up_cpu(8)  # the embedder runs data-parallel over 8 simulated devices
quiet()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bt_jax.data.folder import scan_folder  # noqa: E402
from bt_jax.identify import study  # noqa: E402
from bt_jax.identify.align import align  # noqa: E402
from bt_jax.identify.app import network_embedder  # noqa: E402
from bt_jax.identify.detect import Detector, Settings  # noqa: E402
from bt_jax.identify.photos import to_image_size  # noqa: E402
from bt_jax.runtime.workdir import check_output_file  # noqa: E402

define_set_up_flags()
_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The fine-tuned run that embeds the crops.")
_DATA = flags.DEFINE_string("data_dir", None, "MLFW val: <identity>/<Name>_SSSS_VVVV crops.")
_LABELS = flags.DEFINE_string("labels", None, "Lines 'masked|unmasked <identity>/<file>'.")
_REPEATS = flags.DEFINE_integer("repeats", 4, "Placements of each labelled image.")
_OUT = flags.DEFINE_string("out", None, "JSON file of the results.")
_SAVE = flags.DEFINE_string("save_canvases", None, "Folder for part 2's canvases.")
_SEED = flags.DEFINE_integer("seed", 0, "Placements.")
BINS = [(0.5, 1.0), (1.0, 2.0001)]


def saver(folder: str, truth: list):
    os.makedirs(folder, exist_ok=True)

    def keep(composite, faces):
        name = f"canvas_{len(truth):04d}.png"
        Image.fromarray(composite.image).save(os.path.join(folder, name))
        truth.append({"file": name, "faces": [
            {"item": p.item, "scale": p.scale, "landmarks": p.landmarks.tolist()}
            for p in composite.faces], "detected": {
            "boxes": faces.boxes.tolist(), "landmarks": faces.landmarks.tolist(),
            "scores": faces.scores.tolist()}})
    return keep


def round_trip(detector, embedder, records, crops, config, rng) -> dict:
    size = embedder.preprocessing["image_size"]
    originals = embedder(np.stack([to_image_size(c, size) for c in crops]))
    everyone = np.ones(len(records), bool)
    out = {"original": study.identification_accuracy(originals, records, everyone,
                                                     seed=config.eval.seed)}
    # The same crops re-aligned from MTCNN's landmarks, untransformed: what aligning by
    # the detector's landmarks alone costs, before any scale or rotation.
    marks = [study.on_crop(detector, c, c.shape[0] // 2) for c in tqdm(crops, desc="re-align")]
    found = np.asarray([m is not None for m in marks])
    how = detector.settings.align_from
    again = np.stack([to_image_size(align(c, m, c.shape[0], how) if m is not None else c, size)
                      for c, m in zip(crops, marks)])
    out["realigned"] = study.identification_accuracy(embedder(again), records, found,
                                                     seed=config.eval.seed)
    for low, high in BINS:
        done = study.run(detector, crops, range(len(crops)), rng, scales=(low, high),
                         crop_size=config.data.crop_size, progress=tqdm)
        rows = sorted(done["rows"], key=lambda r: r["item"])
        found = np.asarray([r["found"] for r in rows])
        recovered = np.stack([to_image_size(r["crop"] if r["found"] else crops[r["item"]], size)
                              for r in rows])
        accuracy = study.identification_accuracy(embedder(recovered), records, found,
                                                 seed=config.eval.seed)
        paired = accuracy["hits"].astype(float) - out["original"]["hits"].astype(float)
        seen = accuracy["found"]
        out[f"{low}-{high:.0f}"] = {
            "detection": study.summarise(rows, done["canvases"], done["false"]),
            "accuracy": accuracy, "minus_original": float(paired.mean()),
            "found_probes": int(seen.sum()),
            "found_probes_accuracy": float(accuracy["hits"][seen].mean()),
            "found_probes_original_accuracy": float(out["original"]["hits"][seen].mean())}
    for key, value in out.items():
        for name in ("hits", "found"):
            (value if key in ("original", "realigned") else value["accuracy"]).pop(name)
    return out


def masked_study(detector, records, crops, labels, config, rng, keep) -> dict:
    items = [i for i, r in enumerate(records) if os.path.realpath(r.path) in labels]
    done = study.run(detector, crops, items * _REPEATS.value, rng, scales=(0.5, 2.0),
                     crop_size=config.data.crop_size, progress=tqdm, keep=keep)
    reference = {i: study.on_crop(detector, crops[i], crops[i].shape[0] // 2) for i in items}
    for row in done["rows"]:
        row["consistency"] = study.consistency(row, row["placed"], reference[row["item"]])
    out = {"labelled_images": len(items), "canvases": done["canvases"],
           "false_per_canvas": done["false"] / done["canvases"]}
    for kind in ("unmasked", "masked"):
        rows = [r for r in done["rows"]
                if labels[os.path.realpath(records[r["item"]].path)] == kind]
        share = len(rows) / len(done["rows"])
        out[kind] = study.by_scale(rows, round(done["canvases"] * share),
                                   round(done["false"] * share), BINS)
        out[kind]["all"] = study.summarise(rows, round(done["canvases"] * share),
                                           round(done["false"] * share),
                                           groups=[r["item"] for r in rows])
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_after_flags()
    config = _CONFIG.value
    try:
        if not (config and _WORKDIR.value and _DATA.value and _LABELS.value and _OUT.value):
            raise ValueError("give --config, --workdir, --data_dir, --labels and --out.")
        check_output_file(_OUT.value, "--out")
        records = scan_folder(_DATA.value, min_images_per_identity=1)
        labels = study.read_labels(_LABELS.value, _DATA.value)
    except (ValueError, FileNotFoundError) as e:
        sys.exit("error: " + " ".join(f"{type(e).__name__}: {e}".split()))
    crops = [np.asarray(Image.open(r.path).convert("RGB")) for r in records]
    detector = Detector(Settings.from_config(config.detect))
    embedder = network_embedder(config, workdir=_WORKDIR.value)
    rng = np.random.default_rng(_SEED.value)
    truth: list = []
    keep = saver(_SAVE.value, truth) if _SAVE.value else None
    results = {"masked": masked_study(detector, records, crops, labels, config, rng, keep),
               "round_trip": round_trip(detector, embedder, records, crops, config, rng)}
    if _SAVE.value:
        with open(os.path.join(_SAVE.value, "truth.json"), "w") as f:
            json.dump(truth, f)
    with open(_OUT.value, "w") as f:
        json.dump(results, f, indent=1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    app.run(main)
