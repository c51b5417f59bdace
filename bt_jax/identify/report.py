"""The measured side of identify: classifiers side by side, and open-set rates.

On a folder of ``<identity>/<Name>_SSSS_VVVV`` crops (MLFW's val), every image embedded
once, then:

* **closed set**: gallery = each person's first two source photos (unmasked), probes =
  masked images of their other photos (source-disjoint by construction); top-1 accuracy
  of '1nn', 'knn' and 'svm' with a bootstrap interval over identities;
* **open set**: people split by seed into enrolled (half), calibration strangers and
  test strangers (a quarter each). The threshold for each FPIR is set on the calibration
  strangers; on the test strangers the FPIR is measured, and on the enrolled people's
  probes the detection-and-identification rate (DIR: named correctly *and* above the
  threshold). FPIR grows with the gallery, so the gallery size is reported with it.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np

from bt_jax.evaluation import protocols
from bt_jax.evaluation.stats import bootstrap_ci
from bt_jax.identify.crops import embed_all
from bt_jax.identify.gallery import CLASSIFIERS, Classifier, Gallery, calibrate, identify


def _gallery(features, index, chosen, embedder) -> Gallery:
    rows = [index[id(r)] for r in chosen]
    return Gallery(features[rows], [r.identity for r in chosen], [r.path for r in chosen],
                   embedder.fingerprint, embedder.preprocessing)


def closed_set(features, records, embedder, classifiers: Sequence[Classifier], *,
               seed: int, samples: int = 1000) -> Dict[str, Any]:
    a = protocols.first_sources(records, count=2)
    index = {id(r): i for i, r in enumerate(records)}
    gallery = _gallery(features, index, a.gallery, embedder)
    probes = features[[index[id(r)] for r in a.probes]]
    truth = np.asarray([r.identity for r in a.probes])
    out = {"protocol": a.protocol, "gallery_images": len(a.gallery),
           "gallery_people": len(gallery.people), "probes": len(a.probes),
           "people_with_2_gallery_photos": _two_photo_people(a.gallery), "classifiers": {}}
    for c in classifiers:
        named = np.asarray([x.identities[0] for x in identify(gallery, probes, c,
                                                                        top_k=1)])
        correct = (named == truth).astype(np.float64)
        lo, hi = bootstrap_ci(correct, truth, samples=samples, seed=seed)
        out["classifiers"][c.name] = {"accuracy": float(correct.mean()), "ci95": [lo, hi]}
    return out


def _two_photo_people(gallery_records) -> int:
    sources: Dict[str, set] = {}
    for r in gallery_records:
        sources.setdefault(r.identity, set()).add(r.source)
    return sum(len(s) >= 2 for s in sources.values())


def _split_people(people: List[str], seed: int):
    order = np.random.default_rng(seed).permutation(len(people))
    half, three_quarters = len(people) // 2, (3 * len(people)) // 4
    pick = lambda part: {people[i] for i in order[part]}  # noqa: E731
    return (pick(slice(0, half)), pick(slice(half, three_quarters)),
            pick(slice(three_quarters, None)))


def open_set(features, records, embedder, classifier: Classifier, fpirs: Sequence[float], *,
             seed: int) -> Dict[str, Any]:
    enrolled, calibration, test = _split_people(sorted({r.identity for r in records}), seed)
    a = protocols.first_sources([r for r in records if r.identity in enrolled], count=2)
    index = {id(r): i for i, r in enumerate(records)}
    gallery = _gallery(features, index, a.gallery, embedder)

    def stranger_rows(people):  # a stranger's masked images, as probes would be
        return [index[id(r)] for r in records if r.identity in people and r.masked is not False]
    calibrated = calibrate(gallery, features[stranger_rows(calibration)], classifier,
                                    fpirs)
    mated = identify(gallery, features[[index[id(r)] for r in a.probes]], classifier,
                              top_k=1)
    tests = identify(gallery, features[stranger_rows(test)], classifier, top_k=1)
    truth = [r.identity for r in a.probes]
    rates = {}
    for f in fpirs:
        t = calibrated["thresholds"][str(f)]
        hits = [m.identities[0] == y and m.similarities[0] >= t for m, y in zip(mated, truth)]
        false = [s.similarities[0] >= t for s in tests]
        rates[str(f)] = {"threshold": t, "dir": float(np.mean(hits)),
                         "measured_fpir": float(np.mean(false)), "false_positives": int(sum(false))}
    return {"classifier": classifier.name, "gallery_people": len(gallery.people),
            "gallery_images": len(gallery.files), "mated_probes": len(mated),
            "calibration_strangers": calibrated["strangers"],
            "calibration_people": len(calibration), "test_strangers": len(tests),
            "test_people": len(test), "rates": rates}


# The open set splits the people into enrolled (half), calibration and test strangers (a
# quarter each): four is the fewest that gives every part someone, and the SVM two classes.
MIN_PEOPLE = 4


def check_people(records, where: str) -> None:
    """Enough people with both a gallery photo and a probe, before any measurement."""
    a = protocols.first_sources(records, count=2)
    usable = len({r.identity for r in a.probes})
    if usable < MIN_PEOPLE:
        raise ValueError(f"{where}: report needs at least {MIN_PEOPLE} people who each have "
                         "an unmasked photo for the gallery and an image of another source "
                         f"photo as a probe; {usable} of {len({r.identity for r in records})} "
                         "do. Add people or images, or use scripts/evaluate.py.")


def report(embedder, records, identify_config, *, seed: int,
           where: str = "the data") -> Dict[str, Any]:
    """Embed ``records`` (aligned crops) once, then the closed- and open-set measurements."""
    check_people(records, where)
    paths = [r.path for r in records]
    features, kept, skipped = embed_all(embedder, paths, embedder.preprocessing)
    kept_set = set(kept)
    records = [r for r in records if r.path in kept_set]
    check_people(records, f"{where} (after {len(skipped)} unreadable images)")
    classifiers = [Classifier(name, identify_config.k) for name in CLASSIFIERS]
    return {"images": len(records), "skipped": skipped,
            "closed_set": closed_set(features, records, embedder, classifiers, seed=seed),
            "open_set": {c.name: open_set(features, records, embedder, c,
                                          identify_config.fpir, seed=seed)
                         for c in classifiers}}
