"""Find unreadable, very poor and duplicate images and write the exclusion list.

  python scripts/clean_data.py ../shared/data/mlfw/train ../shared/data/mlfw/val \\
      --out runs/mlfw_exclusions.txt
  python scripts/train.py --config configs/mlfw.py --workdir runs/mlfw \\
      --config.data.exclude_file=runs/mlfw_exclusions.txt

Each folder is either one split in the per-identity layout (<identity>/<Name>_SSSS_VVVV.jpg)
or an MLFW release root (aligned/ + pairs.txt, all folds). The checks and their
thresholds are described in bt_jax/data/cleaning.py; the counts per folder and kind
are printed (and written with --json). One list covers all folders: its keys
(<identity>/<file>) do not depend on the folder.
"""

import json
import pathlib
import sys

from absl import app, flags

from bt_jax.data import cleaning, release
from bt_jax.data.exclusions import write_exclusions
from bt_jax.data.folder import scan_folder
from bt_jax.runtime.logs import quiet

quiet()  # warnings (a folder's skipped identities) on one line each, as the other scripts

_OUT = flags.DEFINE_string("out", None, "Write the exclusion list here.")
_JSON = flags.DEFINE_string("json", None, "Also write the counts here as JSON.")
_PHASH = flags.DEFINE_integer("phash_distance", cleaning.Thresholds.phash_distance,
                              "Near-duplicate source photos: at most this many bits apart.")
_STD = flags.DEFINE_float("min_std", cleaning.Thresholds.min_std,
                          "Near-uniform below this grayscale std (0..255).")
_SHARP = flags.DEFINE_float("min_sharpness", cleaning.Thresholds.min_sharpness,
                            "Blurred below this Laplacian variance.")
_PADDING = flags.DEFINE_float("max_padding", cleaning.Thresholds.max_padding,
                              "Mostly padding above this fraction of black pixels.")
_THREADS = flags.DEFINE_integer("threads", 0, "Decode threads; 0 = 2 per core.")
flags.mark_flag_as_required("out")


def folder_records(root: pathlib.Path) -> list:
    """Every image of ``root``, in either layout, without any filtering."""
    if (root / release.ALIGNED).is_dir():
        return [r for split in release.SPLIT_FOLDS
                for r in release.release_split_records(root, split)]
    return scan_folder(root, min_images_per_identity=1)


def check_folder(root: pathlib.Path, thresholds: cleaning.Thresholds):
    """(problems, counts) of one folder."""
    records = folder_records(root)
    stats = cleaning.collect_stats(records, lambda i: pathlib.Path(records[i].path).read_bytes(),
                                   threads=_THREADS.value)
    problems = cleaning.find_problems(stats, thresholds)
    counts = {"images": len(records), "identities": len({r.identity for r in records}),
              **cleaning.summarize(problems), "excluded": len(problems)}
    return problems, counts


def main(argv):
    if len(argv) < 2:
        raise app.UsageError("name at least one data folder")
    thresholds = cleaning.Thresholds(min_std=_STD.value, min_sharpness=_SHARP.value,
                                     max_padding=_PADDING.value,
                                     phash_distance=_PHASH.value)
    entries, report = [], {}
    for folder in argv[1:]:
        try:
            problems, counts = check_folder(pathlib.Path(folder), thresholds)
        except (FileNotFoundError, ValueError) as error:
            sys.exit(f"error: {type(error).__name__}: {error}")
        entries += [(key, f"{kind}: {detail}") for key, (kind, detail) in problems.items()]
        report[folder] = counts
        print(f"{folder}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    written = write_exclusions(_OUT.value, entries)
    print(f"wrote {written} exclusions to {_OUT.value}")
    if _JSON.value:
        pathlib.Path(_JSON.value).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
