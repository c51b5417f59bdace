"""Identify throughput: aligned crops in, names out, against a 10,000-person gallery.

  python scripts/benchmark_identify.py                       # FaceNet, 160 px, 1-NN
  python scripts/benchmark_identify.py --config configs/mlfw_cpu.py --queries 512

The gallery is synthetic (random unit embeddings of the network's feature size, one or
more per person): search time depends only on its size, not on what it holds. Queries are
synthetic face crops through the real network (random weights by default: the same
compute as trained ones). Timed: embedding (the network under pmap, as scripts/identify.py
runs it), the search (cosine similarity to every gallery image, best per person, top-k),
and both together, after one warm-up call that compiles. Prints one JSON line.
"""

from bt_jax.runtime.devices import define_set_up_flags, set_up_cpu
from bt_jax.runtime.logs import quiet

set_up_cpu(8)  # first: tcmalloc (a re-exec), 8 simulated CPU devices, the fast CPU path
quiet()

import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
define_set_up_flags()
_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "facenet.py"),
                                          "The embedder's config (its init: --init).")
_INIT = flags.DEFINE_string("init", "scratch", "Weights: 'scratch' or converted weights.")
_PEOPLE = flags.DEFINE_integer("people", 10_000, "Enrolled people.")
_PER_PERSON = flags.DEFINE_integer("per_person", 1, "Gallery images per person.")
_QUERIES = flags.DEFINE_integer("queries", 256, "Query crops per timed call.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed calls (the median is reported).")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main(argv):
    del argv
    import numpy as np

    from bt_jax.benchmark.measure import median_pass
    from bt_jax.identify import app
    from bt_jax.identify.gallery import Classifier, Gallery, identify
    from bt_jax.data import faces, synthetic
    from bt_jax.runtime.logs import quiet_after_flags

    quiet_after_flags()
    config = _CONFIG.value
    embedder = app.network_embedder(config, init=_INIT.value)
    size = config.data.image_size
    crops = np.stack([synthetic.render_variants(faces.sample_identity(0, i),
                                                faces.sample_photo(0, i, 0), [], size)[0]
                      for i in range(_QUERIES.value)])
    dim = embedder(crops[:1]).shape[1]
    rng = np.random.default_rng(0)
    n = _PEOPLE.value * _PER_PERSON.value
    gallery = Gallery(rng.standard_normal((n, dim)).astype(np.float32),
                               [f"p{i // _PER_PERSON.value:05d}" for i in range(n)],
                               [f"g{i}" for i in range(n)], embedder.fingerprint,
                               embedder.preprocessing)
    features = embedder(crops)
    classifier = Classifier("1nn")
    embed_s = median_pass(lambda: embedder(crops), _ROUNDS.value)
    search_s = median_pass(lambda: identify(gallery, features, classifier),
                            _ROUNDS.value)
    both_s = median_pass(lambda: identify(gallery, embedder(crops), classifier),
                          _ROUNDS.value)
    q = _QUERIES.value
    print(json.dumps({"cpu": _cpu(), "cores": os.cpu_count(), "arch": config.model.arch,
                      "image_size": size, "feature_dim": dim, "people": _PEOPLE.value,
                      "gallery_images": n, "queries": q,
                      "embed_images_per_s": round(q / embed_s, 1),
                      "search_queries_per_s": round(q / search_s, 1),
                      "identify_images_per_s": round(q / both_s, 1)}))


if __name__ == "__main__":
    app.run(main)
