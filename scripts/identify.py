"""Enrol people into a gallery, then name the people in aligned face crops, or say unknown.

Inputs are ALIGNED FACE CROPS like the training data's (MLFW: 112x112, eyes and mouth at
fixed places; an image of another size is refused rather than squashed), or with
--photos ordinary photos: every face is found (MTCNN) and aligned first.

  # enrol a folder of <identity>/<image> crops; hold out a quarter of the people as
  # strangers to calibrate the 'unknown' threshold for config.identify.fpir
  python scripts/identify.py enrol --config configs/mlfw_facenet.py \
      --workdir runs/mlfw_facenet --images people/ --out gallery.npz \
      --config.identify.holdout_fraction=0.25
  # add people later: only the new images are embedded
  python scripts/identify.py enrol --config ... --workdir ... --images more/ --out gallery.npz --add
  # name the faces in images or folders: top-k identities with cosine similarity
  python scripts/identify.py query --gallery gallery.npz crops/ one.jpg --out answers
  # photos: enrol each photo's largest face; name every face of a group photo, and draw
  python scripts/identify.py enrol --photos --config ... --workdir ... --images people/ --out g.npz
  python scripts/identify.py query --photos --gallery g.npz party.jpg --out answers --draw drawn/
  # the same from an exported embedder alone (scripts/export.py)
  python scripts/identify.py query --gallery gallery.npz --exported export/ crops/
  # measured on a labelled folder: classifiers side by side, open-set rates
  python scripts/identify.py report --config configs/mlfw_facenet.py \
      --workdir runs/mlfw_facenet --data_dir ../shared/data/mlfw/val --out report.json
"""

import sys

from bt_jax.identify.onnx_embedder import exports_onnx
from bt_jax.runtime.devices import define_set_up_flags, set_up_cpu
from bt_jax.runtime.logs import quiet, quiet_after_flags

# First: tcmalloc (a re-exec), 8 simulated CPU devices, the fast CPU path; with an ONNX
# --exported embedder onnxruntime embeds, and jax is neither probed nor imported.
set_up_cpu(8, uses_jax=not exports_onnx(sys.argv))
quiet()

import json  # noqa: E402
import os  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bt_jax.identify.app import (enrol, exported_embedder, network_embedder, query,  # noqa: E402
                                 rebuild_embedder, write_rows)
from bt_jax.identify.crops import list_queries  # noqa: E402
from bt_jax.identify.gallery import Gallery, check_settings, check_threshold  # noqa: E402
from bt_jax.runtime.lock import FileLock, LockedError  # noqa: E402
from bt_jax.runtime.workdir import check_output_file  # noqa: E402

COMMANDS = ("enrol", "query", "report")
define_set_up_flags()
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config (model, crop "
                                          "and image size, config.identify.*).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training run whose latest checkpoint embeds.")
_INIT = flags.DEFINE_string("init", None, "Converted weights, or 'scratch', instead of a run.")
_EXPORTED = flags.DEFINE_string("exported", None, "An exported embedder (scripts/export.py) "
                                "instead of --config/--workdir.")
_IMAGES = flags.DEFINE_string("images", None, "enrol: folder of <identity>/<image> crops.")
_GALLERY = flags.DEFINE_string("gallery", None, "query: the gallery file (.npz).")
_ADD = flags.DEFINE_bool("add", False, "enrol: add to the existing --out gallery.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "query: cosine similarity below which a "
                                "face is 'unknown' (default: the gallery's calibrated one).")
_DATA = flags.DEFINE_string("data_dir", None, "report: labelled <identity>/<Name>_SSSS_VVVV "
                            "crops.")
_PHOTOS = flags.DEFINE_bool("photos", False, "enrol/query: ordinary photos, not aligned crops: "
                            "faces are found (MTCNN, config.detect) and aligned first; enrol "
                            "takes each photo's largest face, query every face.")
_DRAW = flags.DEFINE_string("draw", None, "query --photos: folder for copies of the photos "
                            "with each face boxed and named.")
_OUT = flags.DEFINE_string("out", None, "enrol: gallery file; query: prefix of the .csv and "
                           ".json answers; report: JSON file.")


def _embedder(config):
    if _EXPORTED.value:
        if _WORKDIR.value or _INIT.value:
            raise ValueError("--exported embeds on its own: drop --workdir/--init.")
        return exported_embedder(_EXPORTED.value)
    if config is None:
        raise ValueError("name the model: --config with --workdir or --init, or --exported.")
    return network_embedder(config, workdir=_WORKDIR.value, init=_INIT.value,
                                         progress=True)


def _settings(config):
    from bt_jax.config import base_config

    settings, seed = (config or base_config()).identify, (config or base_config()).seed
    check_settings(settings)
    return settings, seed


def _photo_reader(config, embedder, largest_only: bool):
    """identify/photos.PhotoReader for --photos, else None (aligned crops)."""
    if not _PHOTOS.value:
        return None
    from bt_jax.config import base_config
    from bt_jax.identify.detect import Detector, Settings
    from bt_jax.identify.photos import PhotoReader

    detector = Detector(Settings.from_config((config or base_config()).detect))
    return PhotoReader(detector, embedder.reads, largest_only=largest_only)


def run_enrol(config) -> None:
    if not _IMAGES.value or not _OUT.value:
        raise ValueError("enrol needs --images (a folder of <identity>/<image>) and --out.")
    out = check_output_file(_OUT.value, "--out")
    settings, seed = _settings(config)
    # One writer per gallery: a second `enrol --add` would replace the first one's people.
    with FileLock(f"{out}.lock", f"the gallery {out}"):
        existing = Gallery.load(out) if _ADD.value else None
        if existing is None and os.path.exists(out):
            raise ValueError(f"{out} exists: pass --add to add people to it, or another "
                             "--out.")
        embedder = _embedder(config)
        done = enrol(embedder, _IMAGES.value, identify_config=settings, seed=seed,
                     existing=existing, reader=_photo_reader(config, embedder, True))
        _report_skipped(done.skipped)
        done.gallery.save(out)
    g = done.gallery
    print(f"gallery {out}: {len(g.people)} people, {len(g.files)} images (fingerprint "
          f"{g.fingerprint}); {done.already} listed images were already in it")
    if done.held:
        print(f"held out {len(done.held)} new people as strangers (not enrolled)")
    c = g.calibration
    if c:
        print(f"strangers: {len(g.strangers.people)} people ({c['strangers']} images); "
              f"thresholds for a gallery of {c['gallery_people']} people: "
              + ", ".join(f"FPIR {f}: {t:.4f}" for f, t in c["thresholds"].items()))
    else:
        print("no 'unknown' threshold: the gallery holds no strangers with a readable image "
              "(--config.identify.holdout_fraction holds some out)")


def run_query(config, paths) -> None:
    if not _GALLERY.value:
        raise ValueError("query needs --gallery (from `identify.py enrol`) and image paths.")
    check_threshold(_THRESHOLD.value)
    if _DRAW.value and not _PHOTOS.value:
        raise ValueError("--draw boxes the faces found in photos: add --photos.")
    if _OUT.value:
        for suffix in (".csv", ".json"):
            check_output_file(_OUT.value + suffix, "--out")
    if _DRAW.value and os.path.isfile(_DRAW.value):
        raise ValueError(f"--draw {_DRAW.value} is a file; give a folder for the pictures.")
    settings, _ = _settings(config)
    gallery = Gallery.load(_GALLERY.value)
    images = list_queries(paths)
    embedder = (_embedder(config) if _EXPORTED.value or config is not None
                else rebuild_embedder(gallery.source))
    done = query(embedder, gallery, images, identify_config=settings,
                 threshold=_THRESHOLD.value, reader=_photo_reader(config, embedder, False))
    _report_skipped(done.skipped)
    if not done.rows:
        raise ValueError(f"none of the {len(images)} images could be answered (each reason "
                         "is above); give aligned face crops, or photos with --photos.")
    print(done.how, file=sys.stderr)
    for row in done.rows:
        if row["rank"] == 1:
            face = f" face {row['face']} at {[row[k] for k in ('x1', 'y1', 'x2', 'y2')]}" \
                if "face" in row else ""
            print(f"{row['image']}{face}: {row['decision']} (best {row['identity']}, "
                  f"similarity {row['similarity']:.3f})")
    if _DRAW.value:
        from bt_jax.identify.photos import draw_answers

        print(f"drew {len(draw_answers(done.rows, _DRAW.value))} photos in {_DRAW.value}")
    if _OUT.value:
        meta = {"gallery": _GALLERY.value, "threshold": done.threshold, "threshold_set": done.how,
                "classifier": settings.classifier, "skipped": done.skipped}
        print("wrote " + ", ".join(write_rows(done.rows, _OUT.value, meta)))


def report(config) -> None:
    from bt_jax.data.sources import folder_records
    from bt_jax.identify.report import report as measure

    if not _DATA.value or not _OUT.value:
        raise ValueError("report needs --data_dir (labelled crops) and --out (a JSON file).")
    check_output_file(_OUT.value, "--out")
    settings, seed = _settings(config)
    embedder = _embedder(config)
    records = folder_records(_DATA.value, embedder.reads["image_size"])
    results = measure(embedder, records, settings, seed=seed, where=_DATA.value)
    with open(_OUT.value, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({"closed_set": results["closed_set"]["classifiers"],
                      "open_set_1nn": results["open_set"]["1nn"]["rates"]}, indent=1))


def _report_skipped(skipped) -> None:
    for path, why in skipped.items():
        print(f"skipped {path}: {why}", file=sys.stderr)
    if skipped:
        print(f"{len(skipped)} image(s) skipped", file=sys.stderr)


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"give a command first: one of {', '.join(COMMANDS)}.")
    command, rest = argv[1], argv[2:]
    quiet_after_flags()
    if command != "query" and rest:
        raise app.UsageError(f"unexpected arguments: {rest}")
    try:
        if command == "enrol":
            run_enrol(_CONFIG.value)
        elif command == "query":
            run_query(_CONFIG.value, rest)
        else:
            report(_CONFIG.value)
    except (ValueError, FileNotFoundError, LockedError) as e:
        sys.exit("error: " + " ".join(f"{type(e).__name__}: {e}".split()))


if __name__ == "__main__":
    app.run(main)
