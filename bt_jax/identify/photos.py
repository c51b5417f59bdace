"""Ordinary photos in: every face found (identify/detect.py), aligned to a crop
(identify/align.py), embedded like an aligned crop, and drawn back on the photo.

``PhotoReader`` is identify's reader for ``--photos`` (one Face per face found, or only
the largest for enrolment); ``draw`` writes the picture a person wants to see: boxes, and
the name or ``unknown`` under each face.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bt_jax.identify.align import align, read_photo
from bt_jax.identify.crops import UNKNOWN, Face, file_digest
from bt_jax.identify.detect import Detector, Faces, largest_box


class Found(NamedTuple):
    """A face of a photo: its aligned crop (crop_size, uint8) and where it was."""
    index: int            # by detection score, 0 first
    crop: np.ndarray
    box: np.ndarray       # x1, y1, x2, y2 in the photo's pixels
    landmarks: np.ndarray  # (5, 2)
    score: float


def read_file(path: str) -> tuple:
    """(uint8 RGB photo, sha256 of the file); ValueError naming the file if unreadable."""
    with open(path, "rb") as f:
        data = f.read()
    return read_photo(data, path), file_digest(data)


def find_faces(detector: Detector, photo: np.ndarray, crop_size: int) -> List[Found]:
    """Every face the detector finds in ``photo``, aligned, highest score first."""
    faces: Faces = detector(photo)
    how = detector.settings.align_from
    return [Found(i, align(photo, faces.landmarks[i], crop_size, how), faces.boxes[i],
                  faces.landmarks[i], float(faces.scores[i])) for i in range(len(faces))]


def largest(found: Sequence[Found]) -> Found:
    return found[largest_box(np.stack([f.box for f in found]))]


def where(found: Found, count: int) -> Dict[str, Any]:
    """A face's place, for answers and the CSV: its index, box, score, landmarks."""
    return {"face": found.index, "faces_in_photo": count,
            "box": [round(float(v), 1) for v in found.box],
            "score": round(found.score, 4),
            "landmarks": [[round(float(x), 1), round(float(y), 1)] for x, y in found.landmarks]}


def to_image_size(crop: np.ndarray, image_size: int) -> np.ndarray:
    """A crop resized as identify resizes a crop file (bilinear), so both embed alike."""
    if crop.shape[0] == image_size:
        return crop
    return np.asarray(Image.fromarray(crop).resize((image_size, image_size), Image.BILINEAR))


class PhotoReader:
    """path -> [Face]: each face of the photo (``largest_only``: the largest one, for
    enrolment, keyed by the path alone). A photo with no face raises ValueError, which
    identify reports as a skipped image with that reason."""

    def __init__(self, detector: Detector, preprocessing: Dict, largest_only: bool = False):
        self.detector, self.largest_only = detector, largest_only
        self.crop_size, self.image_size = preprocessing["crop_size"], preprocessing["image_size"]

    def __call__(self, path: str) -> List[Face]:
        photo, digest = read_file(path)
        found = find_faces(self.detector, photo, self.crop_size)
        if not found:
            raise ValueError(f"no face found in {path} (a face smaller than "
                             "config.detect.min_face_size, or a masked face MTCNN missed)")
        if self.largest_only:
            face = largest(found)
            return [Face(path, to_image_size(face.crop, self.image_size), digest,
                         where(face, len(found)))]
        return [Face(f"{path}#{f.index}", to_image_size(f.crop, self.image_size), digest,
                     where(f, len(found))) for f in found]


def draw(photo: np.ndarray, faces: Sequence[Dict[str, Any]]) -> Image.Image:
    """The photo with each face's box and label (``faces``: dicts with ``box``, ``label``
    and ``known``); known faces in green, unknown ones in orange."""
    image = Image.fromarray(photo)
    pen = ImageDraw.Draw(image)
    width = max(2, round(max(photo.shape[:2]) / 300))
    font = ImageFont.load_default(size=max(12, round(max(photo.shape[:2]) / 40)))
    for face in faces:
        x1, y1, x2, y2 = face["box"]
        colour = (40, 200, 60) if face["known"] else (255, 140, 0)
        pen.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        left, top, right, bottom = pen.textbbox((x1, y2 + width), face["label"], font=font)
        pen.rectangle([left - 2, top - 2, right + 2, bottom + 2], fill=colour)
        pen.text((x1, y2 + width), face["label"], fill=(0, 0, 0), font=font)
    return image


def draw_answers(rows: Sequence[Dict[str, Any]], folder: str) -> List[str]:
    """A copy of each answered photo in ``folder`` with its faces boxed and named (the
    rank-1 rows of identify's answers); returns the files written."""
    by_photo: Dict[str, List[Dict[str, Any]]] = {}
    for row in rows:
        if row["rank"] == 1 and "face" in row:
            known = row["decision"] != UNKNOWN
            by_photo.setdefault(row["image"], []).append({
                "box": (row["x1"], row["y1"], row["x2"], row["y2"]), "known": known,
                "label": f"{row['decision']} {row['similarity']:.2f}"})
    os.makedirs(folder, exist_ok=True)
    written, names = [], set()
    for image, faces in by_photo.items():
        stem = os.path.splitext(os.path.basename(image))[0]
        name, n = f"{stem}.jpg", 1
        while name in names:
            n += 1
            name = f"{stem}-{n}.jpg"
        names.add(name)
        path = os.path.join(folder, name)
        staging = path + ".partial"
        draw(read_file(image)[0], faces).save(staging, format="JPEG", quality=90)
        os.replace(staging, path)
        written.append(path)
    return written
