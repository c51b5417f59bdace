"""TensorFlow Datasets builder ``mlfw``, written and read without TensorFlow.

It stores ArrayRecord files (``file_format='array_record'``) and is read back
with ``builder.as_data_source``, i.e. random access from plain Python, which is
what the grain pipeline needs. Images are kept as the original encoded bytes
(no re-encoding), so the TFDS and folder sources decode to identical pixels.

Features: ``image`` (encoded bytes), ``identity`` (name), ``source`` (SSSS, the
source photo), ``variant`` (VVVV), ``masked`` (1/0, -1 unknown) and ``file_name``.
Class labels are not stored: they are numbered at read time, after the
exclusion list, exactly as the folder source numbers them.
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable

import numpy as np
import tensorflow_datasets as tfds

from bt_jax.data import release
from bt_jax.data.exclusions import record_key
from bt_jax.data.folder import ImageRecord, scan_folder

FOLDER_SPLITS = ("train", "val", "test")

MANUAL_INSTRUCTIONS = f"""\
MLFW (Masked LFW, http://whdeng.cn/mlfw/) is distributed for non-commercial research by
request only, so it cannot be downloaded automatically. Put it in `manual_dir`
(config.data.manual_dir) in either layout:

1. per identity, one folder per split (train/ and val/ required, test/ optional):
     manual_dir/train/<Name>/<Name>_SSSS_VVVV.jpg
     manual_dir/val/<Name>/<Name>_SSSS_VVVV.jpg
2. the official release: a flat folder and the verification pairs:
     manual_dir/{release.ALIGNED}/<Name>_SSSS_VVVV.jpg
     manual_dir/{release.PAIRS}
   split by the 10 folds of pairs.txt: folds 1-8 train, 9 val, 10 test.
"""


def manual_layout(manual_dir) -> str:
    """'folder' or 'release', or FileNotFoundError naming the folder and both layouts."""
    root = pathlib.Path(manual_dir)
    if (root / "train").is_dir():
        return "folder"
    if (root / release.ALIGNED).is_dir() and (root / release.PAIRS).is_file():
        return "release"
    raise FileNotFoundError(f"{root} holds neither train/ nor {release.ALIGNED}/ + "
                            f"{release.PAIRS}.\n{MANUAL_INSTRUCTIONS}")


def manual_split_records(manual_dir) -> dict[str, list[ImageRecord]]:
    """{split: records} of the raw data in ``manual_dir``, in either layout."""
    root = pathlib.Path(manual_dir)
    if manual_layout(root) == "release":
        return {split: release.release_split_records(root, split) for split in release.SPLIT_FOLDS}
    return {split: scan_folder(root / split, min_images_per_identity=1)
            for split in FOLDER_SPLITS if (root / split).is_dir()}


class Mlfw(tfds.core.GeneratorBasedBuilder):
    """Masked LFW faces with identity and source-photo ids."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Masked LFW (MLFW): aligned 112x112 faces with synthetic masks, "
                        "named <Name>_SSSS_VVVV (source photo, variant).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "identity": tfds.features.Text(),
                "source": tfds.features.Scalar(dtype=np.int32),
                "variant": tfds.features.Scalar(dtype=np.int32),
                "masked": tfds.features.Scalar(dtype=np.int8),
                "file_name": tfds.features.Text(),
            }),
            homepage="http://whdeng.cn/mlfw/",
            citation="Wang, Fang, Zhong, Deng. MLFW: A Database for Face Recognition on "
                     "Masked Faces. arXiv:2109.05804, 2021.",
        )

    def _split_generators(self, dl_manager):
        splits = manual_split_records(dl_manager.manual_dir)
        return {name: self._generate_examples(records) for name, records in splits.items()}

    def _generate_examples(self, records):
        for r in records:
            # Raw bytes, even of a corrupt file: readers skip those with a warning,
            # exactly as the folder source does.
            yield record_key(r), {
                "image": pathlib.Path(r.path).read_bytes(), "identity": r.identity,
                "source": r.source, "variant": r.variant,
                "masked": -1 if r.masked is None else int(r.masked),
                "file_name": os.path.basename(r.path)}


def prepare(data_dir, manual_dir) -> Mlfw:
    """Build the ArrayRecord files under ``data_dir`` once (a no-op when already built)."""
    builder = Mlfw(data_dir=os.fspath(data_dir), file_format="array_record")
    if builder.is_prepared():
        return builder
    manual_layout(manual_dir)      # our error, with both layouts, before TFDS's own
    config = tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))
    builder.download_and_prepare(download_config=config)
    return builder


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_split(builder: Mlfw, split: str) -> tuple[list[ImageRecord], Callable[[int], bytes]]:
    """(records, read) of ``split``: ``read(i)`` gives the encoded bytes of ``records[i]``.

    Labels are numbered by sorted identity and records sorted as scan_folder
    sorts them; ``record.path`` is ``mlfw/<split>/<identity>/<file>`` (not a file).
    """
    if split not in builder.info.splits:
        raise ValueError(f"the mlfw TFDS data has no split {split!r} (it has "
                         f"{sorted(builder.info.splits)}); add it to the manual_dir and "
                         "delete the prepared data (config.data.tfds_dir) to rebuild.")
    source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    rows = [source[i] for i in range(len(source))]
    labels = {name: i for i, name in enumerate(sorted({_text(r["identity"]) for r in rows}))}
    entries = []
    for index, row in enumerate(rows):
        identity, masked = _text(row["identity"]), int(row["masked"])
        entries.append((ImageRecord(f"mlfw/{split}/{identity}/{_text(row['file_name'])}",
                                    identity, labels[identity], int(row["source"]),
                                    int(row["variant"]), None if masked < 0 else bool(masked)),
                        index))
    entries.sort(key=lambda e: (e[0].label, e[0].source, e[0].variant, e[0].path))
    order = [index for _, index in entries]
    return [record for record, _ in entries], lambda i: source[order[i]]["image"]
