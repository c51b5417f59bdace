"""A folder of ordinary photos (``<identity>/<image>``) -> a folder of aligned crops in the
layout train.py, evaluate.py and identify.py read (``<identity>/<identity>_SSSS_VVVV.png``).

Photo number SSSS (from 0001, in the order photos are first aligned) is the source photo,
VVVV the face: 0000 for the kept one (the largest), 0001... for the others with
``all_faces`` (they may be other people: look before training on them). ``align.csv`` in
the output folder has a row per face (box, landmarks, score) and per photo without one
(status ``no_face`` or ``unreadable`` with the reason). A photo already in ``align.csv`` is
not done again, so an interrupted run resumes; each crop is written whole (a staging file
renamed), and a row is written only after its crop.

With ``crops`` the photos are already face crops named ``<Name>_SSSS_VVVV`` (MLFW's, or
another aligner's): each is padded by half its size for detection (a face filling its
image has no room for the detector's boxes), re-aligned from the landmarks found and
written under its own name as PNG, so its source and variant numbers stay, and the
re-aligned folder can train beside the original (``config.data.train_extra_dir``).
"""

from __future__ import annotations

import csv
import os
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image

from bt_jax.data.folder import parse_image_name
from bt_jax.identify.align import align
from bt_jax.identify.crops import IMAGE_SUFFIXES
from bt_jax.identify.detect import Detector
from bt_jax.identify.photos import Found, find_faces, largest, read_file

CSV_NAME = "align.csv"
FIELDS = (["photo", "status", "faces_found", "face", "output", "score", "x1", "y1", "x2", "y2"]
          + [f"{p}_{a}" for p in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
             for a in ("x", "y")] + ["reason"])


class Summary(NamedTuple):
    photos: int        # listed
    already: int       # done by an earlier run
    counts: Dict[str, int]  # status -> photos of this run
    crops: int         # written by this run


def list_photos(folder: str) -> List[str]:
    """``identity/file`` of every image one level down, sorted; ValueError if none."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--photos {folder} is not a folder; give one with a "
                                "sub-folder per person (<identity>/<image>).")
    found = [f"{person}/{name}" for person in sorted(os.listdir(folder))
             if os.path.isdir(os.path.join(folder, person)) and not person.startswith(".")
             for name in sorted(os.listdir(os.path.join(folder, person)))
             if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")]
    if not found:
        raise ValueError(f"{folder} holds no images in <identity>/<image> sub-folders "
                         f"(suffixes {', '.join(IMAGE_SUFFIXES)}).")
    return found


def read_done(out: str) -> Tuple[set, Dict[str, int]]:
    """(photos already in align.csv, highest photo number per identity)."""
    done, numbers = set(), {}
    path = os.path.join(out, CSV_NAME)
    if not os.path.isfile(path):
        return done, numbers
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if row.get("reason") is None:  # a line cut short by an interrupted run
                continue
            done.add(row["photo"])
            if row["output"]:
                identity, name = row["output"].split("/", 1)
                number = int(name[len(identity) + 1:].split("_")[0])
                numbers[identity] = max(numbers.get(identity, 0), number)
    return done, numbers


def align_folder(detector: Detector, source: str, out: str, crop_size: int, *,
                 all_faces: bool = False, crops: bool = False, progress=None) -> Summary:
    """Align every photo of ``source`` not yet done into ``out`` (see the module doc)."""
    photos = list_photos(source)
    os.makedirs(out, exist_ok=True)
    done, numbers = read_done(out)
    todo = [p for p in photos if p not in done]
    counts: Dict[str, int] = {}
    written = 0
    path = os.path.join(out, CSV_NAME)
    new_file = not os.path.isfile(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        elif not _ends_a_line(path):
            f.write("\r\n")  # end the row an interrupted run cut short (read_done skips it)
        for photo in (progress(todo) if progress else todo):
            rows = list(_align_one(detector, source, out, photo, crop_size, all_faces, crops,
                                   numbers))
            writer.writerows(rows)
            f.flush()
            counts[rows[0]["status"]] = counts.get(rows[0]["status"], 0) + 1
            written += sum(1 for r in rows if r["output"])
    return Summary(len(photos), len(photos) - len(todo), counts, written)


def _align_one(detector, source, out, photo, crop_size, all_faces, crops,
               numbers) -> Iterator[dict]:
    """The rows of one photo, after its crops are written (``crops``: module doc)."""
    try:
        if crops:
            parse_image_name(photo)  # before the work: train.py needs the SSSS_VVVV numbers
        pixels, _ = read_file(os.path.join(source, photo))
        pad = pixels.shape[0] // 2 if crops else 0
        canvas = (np.pad(pixels, ((pad, pad), (pad, pad), (0, 0)), constant_values=127)
                  if pad else pixels)
        found = find_faces(detector, canvas, crop_size)
    except (OSError, ValueError) as error:
        yield _row(photo, "unreadable", 0, reason=str(error))
        return
    if not found:
        yield _row(photo, "no_face", 0, reason="no face found")
        return
    status = "one_face" if len(found) == 1 else "several_faces"
    if crops:
        kept = [(_realigned(largest(found), pixels, pad, crop_size,
                            detector.settings.align_from),
                 os.path.splitext(photo)[0] + ".png")]
    else:
        kept = _numbered(found, photo.split("/", 1)[0], all_faces, numbers)
    for face, name in kept:
        _save(face.crop, os.path.join(out, name))
        yield _row(photo, status, len(found), face, name)


def _numbered(found, identity: str, all_faces: bool, numbers) -> List[Tuple[Found, str]]:
    """The largest face (every face with ``all_faces``) named by the next photo number."""
    kept = largest(found)
    others = [f for f in found if f.index != kept.index] if all_faces else []
    numbers[identity] = number = numbers.get(identity, 0) + 1
    return [(face, f"{identity}/{identity}_{number:04d}_{variant:04d}.png")
            for variant, face in enumerate([kept] + others)]


def _realigned(face: Found, pixels: np.ndarray, pad: int, crop_size: int,
               align_from: str) -> Found:
    """``face`` found on the crop padded by ``pad``, re-aligned from the crop itself (not
    the grey canvas: outside the crop is black, as where any crop reaches past its photo)."""
    landmarks = face.landmarks - pad
    return face._replace(crop=align(pixels, landmarks, crop_size, align_from),
                         landmarks=landmarks,
                         box=face.box - pad)


def _ends_a_line(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _save(crop: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    staging = path + ".partial"
    Image.fromarray(crop).save(staging, format="PNG")
    os.replace(staging, path)


def _row(photo: str, status: str, count: int, face: Optional[Found] = None,
         output: str = "", reason: str = "") -> dict:
    row = dict.fromkeys(FIELDS, "")
    row.update(photo=photo, status=status, faces_found=count, output=output, reason=reason)
    if face is not None:
        row.update(face=face.index, score=round(face.score, 4))
        row.update(zip(("x1", "y1", "x2", "y2"), (round(float(v), 1) for v in face.box)))
        row.update(zip(FIELDS[10:20], (round(float(v), 1) for v in face.landmarks.ravel())))
    return row
