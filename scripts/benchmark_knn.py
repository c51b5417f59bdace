"""Time 1-NN search, scikit-learn against the batched JAX search, at 10k x 10k.

  python scripts/benchmark_knn.py                  # prints, updates docs/evaluation.md
  python scripts/benchmark_knn.py --doc='' --n=2000

Probes are noisy copies of gallery rows, so every probe has one clear nearest neighbour
and the two backends must agree on all of them. JAX is timed twice: the first call
includes compilation, the second is the steady state an evaluation of many probes sees.
"""

from bt_jax.runtime.devices import simulate_cpu_devices

simulate_cpu_devices(8)  # as scripts/evaluate.py runs: before jax is imported

import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

from absl import app, flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_N = flags.DEFINE_integer("n", 10_000, "Gallery size and probe count.")
_DIMS = flags.DEFINE_list("dims", ["512", "2048"], "Feature dimensions to time.")
_DOC = flags.DEFINE_string("doc", os.path.join(REPO, "docs", "evaluation.md"),
                           "Markdown file whose benchmark section is replaced; '' to skip.")
MARKERS = ("<!-- benchmark:start -->", "<!-- benchmark:end -->")


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def measure(n: int, dim: int, metric: str) -> dict:
    import numpy as np

    from bt_jax.evaluation import knn

    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(n, dim)).astype(np.float32)
    truth = rng.permutation(n)
    probes = gallery[truth] + 0.3 * rng.normal(size=(n, dim)).astype(np.float32)
    (sk, _), t_sk = _timed(lambda: knn.nearest_sklearn(gallery, probes, metric))
    (_, _), t_first = _timed(lambda: knn.nearest_jax(gallery, probes, metric))
    (jx, _), t_jax = _timed(lambda: knn.nearest_jax(gallery, probes, metric))
    return {"n": n, "dim": dim, "metric": metric, "sklearn_s": round(t_sk, 2),
            "jax_first_call_s": round(t_first, 2), "jax_s": round(t_jax, 2),
            "agree": float(np.mean(sk == jx)), "correct": float(np.mean(jx == truth))}


def _table(rows, device: str) -> str:
    lines = [f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
             f"cores visible, JAX on {device}.", "",
             "| n x n | dim | metric | scikit-learn (s) | JAX first call (s) | JAX (s) | "
             "agree |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['n']} x {r['n']} | {r['dim']} | {r['metric']} | {r['sklearn_s']} | "
                     f"{r['jax_first_call_s']} | {r['jax_s']} | {r['agree']:.4f} |")
    return "\n".join(lines)


def _update_doc(path: str, table: str) -> None:
    with open(path) as f:
        text = f.read()
    start, end = text.index(MARKERS[0]), text.index(MARKERS[1])
    with open(path, "w") as f:
        f.write(text[:start + len(MARKERS[0])] + "\n" + table + "\n" + text[end:])


def main(argv):
    del argv
    import jax

    import numpy as np

    from bt_jax.evaluation import knn

    knn.nearest_sklearn(np.ones((2, 2)), np.ones((1, 2)), "cosine")  # import time off the clock
    rows = [measure(_N.value, int(dim), metric) for dim in _DIMS.value
            for metric in ("cosine", "euclidean")]
    for row in rows:
        print(json.dumps(row))
    table = _table(rows, jax.devices()[0].device_kind)
    print(table)
    if _DOC.value:
        _update_doc(_DOC.value, table)


if __name__ == "__main__":
    app.run(main)
