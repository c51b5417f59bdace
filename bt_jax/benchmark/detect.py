"""Photos in, embeddings out: the speed of detection (identify/detect.py), alignment and
the embedder, on 640x480 photos held in memory.

The photos are composites (identify/composites.py) of MLFW val crops, 1-4 faces each at
scales 0.5-2, or, without the data, scikit-image's astronaut (one face) pasted at a
random place and size into a 640x480 noise background. Each measure times whole passes
over all the photos after one untimed pass (it compiles every shape the pass meets) and
gives the median of the timed ones:
- ``detect``: the detector alone on every photo;
- ``align``: the detector's landmarks -> aligned crops (crop size), resized to the
  embedder's image size as identify resizes a crop;
- ``embed``: the embedder on all those crops at once (as identify embeds a chunk of files;
  the network runs batches of config.eval.batch_size, the last one padded, so a few faces
  cost a whole batch: the record gives the padded share);
- ``end_to_end``: the three in a row, as ``identify.py query --photos`` runs them.
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from bt_jax.benchmark.measure import median_pass
from bt_jax.benchmark.plan import _cpu_flags, _cpu_model
from bt_jax.identify.align import align
from bt_jax.identify.composites import background, compose
from bt_jax.identify.crops import IMAGE_SUFFIXES, list_enrolment
from bt_jax.identify.photos import to_image_size

HEIGHT, WIDTH = 480, 640


def composite_photos(data_dir: str, count: int, seed: int = 0,
                     scales=(0.5, 2.0)) -> List[np.ndarray]:
    """``count`` 640x480 composites of the crops in ``data_dir/<identity>/``, 1-4 faces
    each (a seeded draw)."""
    files = [path for _, path in list_enrolment(data_dir)
             if path.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
        raise ValueError(f"{data_dir} holds no images in <identity>/ sub-folders.")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(files), min(len(files), 4 * count), replace=False)
    crops = [np.asarray(Image.open(files[i]).convert("RGB")) for i in pick]
    photos = []
    for _ in range(count):
        items = rng.choice(len(crops), int(rng.integers(1, 5)), replace=False)
        photos.append(compose(rng, crops, items, height=HEIGHT, width=WIDTH,
                              scales=scales).image)
    return photos


def astronaut_photos(count: int, seed: int = 0) -> List[np.ndarray]:
    """``count`` 640x480 photos, each scikit-image's astronaut (512 px, one face) resized
    to 240-480 px and pasted at a random place on smooth noise."""
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    rng = np.random.default_rng(seed)
    photos = []
    for _ in range(count):
        canvas = background(rng, HEIGHT, WIDTH)
        side = int(rng.integers(240, HEIGHT + 1))
        x, y = int(rng.integers(0, WIDTH - side + 1)), int(rng.integers(0, HEIGHT - side + 1))
        canvas[y:y + side, x:x + side] = np.asarray(astronaut.resize((side, side),
                                                                     Image.BILINEAR))
        photos.append(canvas)
    return photos


def save_photos(photos: Sequence[np.ndarray], folder: str) -> None:
    """PNG files photo_0000.png... (lossless: another detector reads the same pixels)."""
    os.makedirs(folder, exist_ok=True)
    for i, photo in enumerate(photos):
        Image.fromarray(photo).save(os.path.join(folder, f"photo_{i:04d}.png"))


def measure(detector, embedder, photos: Sequence[np.ndarray], crop_size: int,
            image_size: int, rounds: int, align_from: str = "five") -> Dict[str, float]:
    """Seconds per pass over ``photos`` of each step (see the module docstring) and the
    number of faces found; crops aligned from ``align_from`` (config.detect)."""
    found = [detector(photo) for photo in photos]
    marks = [(i, lm) for i, faces in enumerate(found) for lm in faces.landmarks]
    if not marks:
        raise ValueError("the detector found no face in the benchmark's photos.")

    def aligned(pairs):
        return np.stack([to_image_size(align(photos[i], lm, crop_size, align_from), image_size)
                         for i, lm in pairs])

    crops = aligned(marks)

    def end_to_end():
        pairs = [(i, lm) for i, photo in enumerate(photos) for lm in detector(photo).landmarks]
        return np.asarray(embedder(aligned(pairs)))

    return {"faces": len(marks),
            "detect_s": median_pass(lambda: [detector(p) for p in photos], rounds),
            "align_s": median_pass(lambda: aligned(marks), rounds),
            "embed_s": median_pass(lambda: np.asarray(embedder(crops)), rounds),
            # Every shape it meets is compiled by now: no untimed pass.
            "end_to_end_s": median_pass(end_to_end, rounds, warm=False)}


def report(times: Dict[str, float], photos: int, batch: int, package: Optional[Dict] = None,
           **about) -> Dict:
    """The JSON record: rates per second, ms per photo, and the package's detection time
    against ours when it was measured in the same run."""
    faces = times["faces"]
    out = {"cpu": _cpu_model(), "cpu_flags": _cpu_flags(), "cores": os.cpu_count(), **about,
           "photos": photos, "photo_size": f"{WIDTH}x{HEIGHT}", "faces": faces,
           "faces_per_photo": round(faces / photos, 2), "embed_batch": batch,
           "embed_padded_share": round(1 - faces / (-(-faces // batch) * batch), 3),
           "end_to_end_faces_per_s": round(faces / times["end_to_end_s"], 2),
           "end_to_end_photos_per_s": round(photos / times["end_to_end_s"], 2),
           "detect_photos_per_s": round(photos / times["detect_s"], 2),
           "detect_ms_per_photo": round(1000 * times["detect_s"] / photos, 1),
           "align_ms_per_face": round(1000 * times["align_s"] / faces, 2),
           "embed_faces_per_s": round(faces / times["embed_s"], 2),
           # The rate a full batch would give (the padded rows cost as much as faces).
           "embed_full_batch_faces_per_s": round(-(-faces // batch) * batch
                                                 / times["embed_s"], 2),
           "end_to_end_ms_per_photo": round(1000 * times["end_to_end_s"] / photos, 1)}
    if package:
        out["package"] = package
        out["package_detect_ms_per_photo"] = round(1000 * package["seconds"] / photos, 1)
        out["package_over_ours_detect_time"] = round(package["seconds"] / times["detect_s"], 2)
    return out


def markdown(record: Dict) -> str:
    """The record as the rows of docs/benchmarks.md's detection table."""
    rows = [("detection alone (ours, JAX)", f"{record['detect_ms_per_photo']} ms a photo",
             f"{record['detect_photos_per_s']} photos/s"),
            ("alignment", f"{record['align_ms_per_face']} ms a face", ""),
            ("embedding", f"{100 * record['embed_padded_share']:.0f}% of the batch "
             "padding", f"{record['embed_faces_per_s']} faces/s "
             f"({record['embed_full_batch_faces_per_s']} at a full batch)"),
            ("detect + align + embed", f"{record['end_to_end_ms_per_photo']} ms a photo",
             f"{record['end_to_end_faces_per_s']} faces/s")]
    if "package" in record:
        rows.insert(1, ("detection alone (`mtcnn` 1.0.0, TensorFlow)",
                        f"{record['package_detect_ms_per_photo']} ms a photo",
                        f"{record['package_over_ours_detect_time']}x our time"))
    lines = [f"{record['photos']} photos {record['photo_size']} ({record['source']}), "
             f"{record['faces']} faces found; embedder {record['embedder']}; "
             f"{record['cpu']}, {record['cores']} cores, {record['cpu_flags']}"
             + (f"; load average {record['load_avg_1min'][0]} at the start, "
                f"{record['load_avg_1min'][1]} at the end" if "load_avg_1min" in record
                else ""),
             "", "| step | time | rate |", "|---|---:|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)
