"""Evaluate face embeddings: 1-NN identification (source-disjoint headline), verification,
per-group accuracy. Writes <out>/results.json and PNG plots.

  # a training run's latest checkpoint, one folder split per identity
  python scripts/evaluate.py --config configs/mlfw.py --workdir runs/mlfw \
      --data_dir ../shared/data/mlfw/val --out runs/mlfw/eval
  # an untrained network, or the raw-pixel baseline, at the data's native 112 px
  python scripts/evaluate.py --config configs/synthetic.py --init scratch \
      --config.data.image_size=112 --data_dir ../shared/data/mlfw/val --out eval/scratch
  python scripts/evaluate.py --config configs/synthetic.py --raw_pixels \
      --config.data.image_size=112 --data_dir ../shared/data/mlfw/val --out eval/pixels
  # a gallery and a probe folder, a pairs file (or --pairs=generate), groups
  python scripts/evaluate.py --config configs/mlfw.py --init converted_weights/x \
      --protocol given --gallery_dir G --probe_dir P --data_dir D --pairs pairs.txt \
      --groups groups.csv --out eval/x

The model (architecture, image size, normalisation, backbone or projector, metric) comes
from --config; the weights from --workdir, --init, or else config.init.
"""

from bt_jax.runtime.devices import define_set_up_flags, set_up_cpu
from bt_jax.runtime.logs import quiet, quiet_after_flags

set_up_cpu(8)  # first: tcmalloc (a re-exec), 8 simulated CPU devices, the fast CPU path
quiet()  # before jax is imported: no backend-probe or font-cache INFO lines

import os  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from bt_jax.data.sources import folder_records  # noqa: E402
from bt_jax.evaluation import knn, protocols, report, verification  # noqa: E402
from bt_jax.evaluation.features import raw_pixels  # noqa: E402
from bt_jax.evaluation.groups import read_groups  # noqa: E402
from bt_jax.evaluation.identification import Identification  # noqa: E402

define_set_up_flags()
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (model, "
                                          "image size, normalisation, config.eval.*).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training run whose latest checkpoint to use.")
_INIT = flags.DEFINE_string("init", None, "Converted-weights folder, or 'scratch' for an "
                            "untrained network (seeded by config.seed). Default: config.init.")
_RAW = flags.DEFINE_bool("raw_pixels", False, "Evaluate the raw-pixel baseline, no network.")
_DATA = flags.DEFINE_string("data_dir", None, "Folder of <identity>/<Name>_SSSS_VVVV.jpg: "
                            "split by --protocol=split, and the root of --pairs.")
_PROTOCOL = flags.DEFINE_enum("protocol", "split", protocols.PROTOCOLS, "Identification "
                              "protocol.")
_GALLERY = flags.DEFINE_string("gallery_dir", None, "Gallery folder (--protocol=given).")
_PROBES = flags.DEFINE_string("probe_dir", None, "Probe folder (--protocol=given).")
_PER_ID = flags.DEFINE_integer("gallery_per_identity", 1, "Gallery images per identity "
                               "(--protocol=split).")
_PAIRS = flags.DEFINE_string("pairs", None, "Pairs file (LFW, CALFW or MLFW format) under "
                             "--data_dir, or 'generate' to write <out>/pairs.txt from it.")
_PAIRS_PER_FOLD = flags.DEFINE_integer("pairs_per_fold", 300, "Positive (and negative) "
                                       "pairs per fold for --pairs=generate.")
_GROUPS = flags.DEFINE_string("groups", None, "CSV of identity,group for per-group accuracy.")
_MIN_SUPPORT = flags.DEFINE_integer("min_group_support", 30, "Groups with fewer probes are "
                                    "flagged as small.")
_OUT = flags.DEFINE_string("out", None, "Output folder for results.json and the plots.")
_NORMALIZE = flags.DEFINE_bool("l2_normalize", False, "L2-normalise embeddings first.")
_SEARCH = flags.DEFINE_enum("search", "jax", knn.BACKENDS, "1-NN search backend.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap_samples", 1000, "Bootstrap resamples for CIs.")
_FAILURES = flags.DEFINE_integer("failure_rows", 8, "Rows of the failure grid.")
flags.mark_flags_as_required(["config", "out"])


def _records(folder: str):
    # Every usable image counts here: a lone image still serves as a gallery candidate.
    config = _CONFIG.value
    return folder_records(folder, config.data.image_size, config.data.exclude_file)


def _assignment(config) -> protocols.Assignment:
    if _PROTOCOL.value == "given":
        if not (_GALLERY.value and _PROBES.value):
            raise ValueError("--protocol=given needs --gallery_dir and --probe_dir.")
        return protocols.given(_records(_GALLERY.value), _records(_PROBES.value))
    if _GALLERY.value or _PROBES.value:
        raise ValueError("--gallery_dir/--probe_dir belong to --protocol=given; with "
                         f"--protocol={_PROTOCOL.value} pass one --data_dir.")
    if not _DATA.value:
        raise ValueError(f"--protocol={_PROTOCOL.value} needs --data_dir, a folder of "
                         "<identity>/<Name>_SSSS_VVVV.jpg images.")
    if _PROTOCOL.value == "first_file":
        return protocols.first_file(_records(_DATA.value))
    return protocols.split(_records(_DATA.value), seed=config.eval.seed,
                           gallery_per_identity=_PER_ID.value)


def _check_paths() -> None:
    """Outputs and run folders that cannot work, found before any image is read."""
    out = _OUT.value
    if not out or os.path.isfile(out) or any(
            os.path.isfile(p) for p in _parents(os.path.abspath(out))):
        raise ValueError(f"--out {out!r} is empty, a file, or lies under a file; name a "
                         "folder for results.json and the plots.")
    if _WORKDIR.value is not None:
        from bt_jax.runtime import run_config

        if not _WORKDIR.value:
            raise ValueError("--workdir is empty; name a training run's folder.")
        run_config.check(_CONFIG.value, _WORKDIR.value, action="load")


def _parents(path: str):
    while True:
        parent = os.path.dirname(path)
        if parent == path:
            return
        yield parent
        path = parent


def _verification(config):
    if not _PAIRS.value:
        return None
    if not _DATA.value:
        raise ValueError("--pairs needs --data_dir, the folder its image names refer to.")
    if _PAIRS.value == "generate":
        pairs = verification.generate_pairs(_records(_DATA.value), seed=config.eval.seed,
                                            pairs_per_fold=_PAIRS_PER_FOLD.value)
        os.makedirs(_OUT.value, exist_ok=True)
        verification.write_pairs(pairs, os.path.join(_OUT.value, "pairs.txt"), _DATA.value)
    else:
        pairs = verification.read_pairs(_PAIRS.value, _DATA.value)
    return verification.Verification(pairs, metric=config.eval.metric)


def _embedder(config):
    """(embedding function, plot title, settings to record) for the chosen weights."""
    if _RAW.value:
        if _WORKDIR.value or _INIT.value:
            raise ValueError("--raw_pixels evaluates no network: drop --workdir/--init.")
        return raw_pixels, "raw pixels", {"embedding": "raw_pixels"}
    from bt_jax.network import embedder  # builds a model: only when one is evaluated

    loaded = embedder.load_weights(config, workdir=_WORKDIR.value, init=_INIT.value)
    if _WORKDIR.value:
        weights = f"checkpoint {_WORKDIR.value} step {loaded.step}"
    else:
        init = _INIT.value or config.init
        weights = f"untrained (seed {config.seed})" if init == "scratch" else f"init {init}"
    title = f"{config.model.arch} {config.eval.embedding}, {weights}"
    # cache: a frozen trunk's activations of the folder serve every checkpoint evaluated
    return (embedder.NetworkEmbedder(config, loaded.variables, cache=True), title,
            {"embedding": config.eval.embedding, "weights": weights,
             "model": config.model.to_dict(), "image_size": config.data.image_size,
             "normalization": config.data.normalization})


def _percent(view) -> str:
    if view["accuracy"] is None:
        return f"   n/a  on {view['probes']} probes"
    lo, hi = view["ci95"]
    return (f"{view['accuracy']:6.1%} [{lo:.1%}, {hi:.1%}] on {view['probes']} probes, "
            f"{view['identities']} identities")


def _print(results) -> None:
    s = results["identification"]
    print(f"{results['title']}: {s['protocol']} protocol, {s['metric']}, gallery "
          f"{s['gallery']} images of {s['gallery_identities']} identities, {s['probes']} probes")
    names = {"source_disjoint": "source-disjoint (headline)", "full": "full",
             "leaked": "leaked (source photo in gallery)"}
    for view, name in names.items():
        print(f"  {name:34s} {_percent(s['views'][view])}")
    print(f"  {'probes of identities not in gallery':34s} {s['unknown_identity_probes']}")
    if "verification" in results:
        v = results["verification"]
        tars = ", ".join(f"TAR@FAR={k} {p['tar']:.3f}" for k, p in v["tar_at_far"].items())
        print(f"  verification: {v['folds']}-fold {v['accuracy']:.1%} ± {v['accuracy_std']:.1%},"
              f" AUC {v['roc_auc']:.3f}, {tars} ({v['pairs']} pairs)")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet_after_flags()
    config = _CONFIG.value
    try:
        _check_paths()
        assignment = _assignment(config)
        checker = _verification(config)
        groups = read_groups(_GROUPS.value) if _GROUPS.value else None
        embed, title, settings = _embedder(config)
        identification = Identification(assignment, metric=config.eval.metric,
                                        search=_SEARCH.value, seed=config.eval.seed,
                                        bootstrap_samples=_BOOTSTRAP.value, progress=True)
        results = report.run_evaluation(embed, identification, report.Report(
            _OUT.value, image_size=config.data.image_size, title=title,
            verification=checker, groups=groups, normalize=_NORMALIZE.value,
            min_support=_MIN_SUPPORT.value, failure_rows=_FAILURES.value,
            settings={"argv": sys.argv, **settings}))
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        # Expected bad input: one line that names the problem and the fix.
        sys.exit("error: " + " ".join(f"{type(e).__name__}: {e}".split()))
    _print(results)
    print(f"results: {os.path.join(_OUT.value, report.RESULTS)}")


if __name__ == "__main__":
    app.run(main)
