"""Skin tone (ITA) per identity of a face folder: a CSV for the evaluator's per-group report,
and a PNG sheet of sampled images with their skin masks. Method: bt_jax/evaluation/skin_tone.py,
docs/skin_tone.md.

  python scripts/skin_tone.py --data_dir ../shared/data/mlfw/val --out_csv runs/tone/val.csv
  python scripts/evaluate.py --config configs/synthetic.py --config.data.image_size=112 \
      --raw_pixels --data_dir ../shared/data/mlfw/val --groups runs/tone/val.csv --out runs/tone/eval

The CSV's ``group`` column is the ITA category (``unknown`` when no image of the identity
had measurable skin). The sheet goes to --sheet, by default beside the CSV.
"""

from bt_jax.runtime.logs import quiet

quiet()  # no font-cache INFO line when matplotlib first runs

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from bt_jax.evaluation import skin_tone  # noqa: E402
from bt_jax.data.folder import load_images  # noqa: E402
from bt_jax.data.sources import folder_records  # noqa: E402

_DATA = flags.DEFINE_string("data_dir", None, "Folder of <identity>/<Name>_SSSS_VVVV.jpg.")
_EXCLUDE = flags.DEFINE_string("exclude_file", "", "Exclusion list from scripts/clean_data.py; "
                               "unreadable images are skipped with a warning either way.")
_CSV = flags.DEFINE_string("out_csv", None, "CSV to write (identity, group = category, ...).")
_SHEET = flags.DEFINE_string("sheet", None, "PNG contact sheet; default <out_csv>_sheet.png. "
                             "Keep it out of the repository when the faces are real.")
_SHEET_IMAGES = flags.DEFINE_integer("sheet_images", 48, "Images sampled for the sheet.")
_SIZE = flags.DEFINE_integer("image_size", 112, "Images are resized to this many pixels.")
_MASK_TOP = flags.DEFINE_float("mask_top", skin_tone.Settings.mask_top, "Rows from this "
                               "fraction of the height down are left out (where masks sit).")
_SIDE = flags.DEFINE_float("side_margin", skin_tone.Settings.side_margin, "Fraction of the "
                           "width left out on each side (ears, hair, background).")
_MIN_SKIN = flags.DEFINE_float("min_skin_fraction", skin_tone.Settings.min_skin_fraction,
                               "Fewer skin pixels than this fraction of the image: unknown.")
_GRAY = flags.DEFINE_float("gray_chroma", skin_tone.Settings.gray_chroma, "90th-percentile "
                           "chroma C*ab below this: a gray image, unknown.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sheet's sample.")
flags.mark_flags_as_required(["data_dir", "out_csv"])


def _sheet(records, tones, settings, path) -> None:
    """Sampled images sorted light to dark, unknowns last, each with its skin mask."""
    rng = np.random.default_rng(_SEED.value)
    count = min(_SHEET_IMAGES.value, len(records))
    chosen = rng.choice(len(records), count, replace=False)
    chosen = sorted(chosen, key=lambda i: (tones[i].ita is None, -(tones[i].ita or 0.0)))
    images = load_images([records[i] for i in chosen], _SIZE.value, progress=False)
    masks = [skin_tone.measure(image, settings)[1] for image in images]
    labels = [os.path.basename(records[i].path).rsplit(".", 1)[0] for i in chosen]
    skin_tone.save_sheet(images, [tones[i] for i in chosen], masks, labels, path,
                         mask_top=settings.mask_top)


def _print_summary(rows, tones, agreement) -> None:
    statuses = [t.status for t in tones]
    print(f"{len(tones)} images: {statuses.count(skin_tone.OK)} with a tone, "
          f"{statuses.count(skin_tone.GRAY)} gray, {statuses.count(skin_tone.NO_SKIN)} no skin")
    print(f"{len(rows)} identities by category: "
          + json.dumps(skin_tone.category_counts(rows)))
    print("consistency (two images of one identity; same / within one category): "
          + json.dumps(agreement))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        settings = skin_tone.Settings(_MASK_TOP.value, _SIDE.value, _MIN_SKIN.value,
                                      _GRAY.value)
        records = folder_records(_DATA.value, _SIZE.value, _EXCLUDE.value)
        tones = skin_tone.measure_records(records, _SIZE.value, settings)
    except (ValueError, FileNotFoundError) as e:
        sys.exit("error: " + " ".join(f"{type(e).__name__}: {e}".split()))
    identities = [r.identity for r in records]
    rows = skin_tone.summarize(identities, tones)
    os.makedirs(os.path.dirname(os.path.abspath(_CSV.value)), exist_ok=True)
    skin_tone.write_csv(rows, _CSV.value)
    agreement = skin_tone.consistency(identities, [r.source for r in records], tones)
    sheet = _SHEET.value or os.path.splitext(_CSV.value)[0] + "_sheet.png"
    _sheet(records, tones, settings, sheet)
    _print_summary(rows, tones, agreement)
    print(f"csv: {_CSV.value}\nsheet: {sheet}")


if __name__ == "__main__":
    app.run(main)
