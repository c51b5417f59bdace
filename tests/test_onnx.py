"""The ONNX embedder: jax2onnx's graph of the whole embedder, run by onnxruntime without jax."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("jax2onnx", reason="the ONNX export needs pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="the ONNX embedder needs onnxruntime")

import jax  # noqa: E402
import onnx  # noqa: E402

from bt_jax.identify import app, exported, onnx_embedder, onnx_export  # noqa: E402
from bt_jax.network import embedder, embedding  # noqa: E402
from bt_jax.network.network import Network  # noqa: E402
from conftest import MLFW_ROOT, tiny_config  # noqa: E402
from test_trunk import SIZE, frozen, tiny_weights  # noqa: E402,F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
CROP = 24  # the tiny network's crops are resized from 24 to its 32 px inside the graph
PARITY = 1e-5  # max |onnx - jax| / max |jax|, float32


def _tiny(crop=CROP):
    config = tiny_config()
    config.data.crop_size = crop
    return config


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """(config, variables, folder of embedder.onnx) of the tiny untrained ResNet."""
    config = _tiny()
    variables = embedder.load_weights(config, init="scratch").variables
    out = str(tmp_path_factory.mktemp("onnx") / "tiny")
    onnx_export.export_onnx(config, variables, out)
    return config, variables, out


def _crops(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _pillow(crops, size):
    """What identify's decoder feeds the JAX embedders: Pillow's bilinear resize."""
    return np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR))
                     for c in crops])


def _ratio(got, want):
    assert got.shape == want.shape and got.dtype == np.float32
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_the_graphs_resize_is_pillows_bit_for_bit():
    resize = jax.jit(onnx_export.resize_like_pillow, static_argnums=1)
    for crop, size in ((112, 160), (112, 244), (24, 32), (40, 32), (31, 7)):
        crops = _crops(3, crop, seed=crop + size)
        assert np.array_equal(np.asarray(resize(crops, size)), _pillow(crops, size)), \
            (crop, size)


def test_onnxruntime_embeds_like_the_jax_embedder(tiny_onnx):
    config, variables, out = tiny_onnx
    embed = exported.load_embedder(out)
    assert isinstance(embed, onnx_embedder.OnnxEmbedder)
    # 3 and 37 rows: the batch is symbolic; 37 runs in two chunks of 32 below.
    network = jax.jit(Network(config).embed_function(variables))
    for n in (3, 37):
        crops = _crops(n, CROP, seed=n)
        assert _ratio(embed(crops), np.asarray(network(_pillow(crops, 32)))) <= PARITY


@pytest.mark.slow
def test_the_frozen_trunk_and_head_are_one_graph(frozen, tmp_path):  # noqa: F811
    from bt_jax.benchmark import serving

    frozen.data.crop_size = SIZE - 16  # the resize in front of the trunk, too
    variables = embedder.load_weights(frozen).variables
    crops = _crops(4, SIZE - 16, seed=5)
    inputs = {"crops": crops, "images": _pillow(crops, SIZE)}
    # The graph is the JAX function: with the trunk's activations in float32 on both sides.
    with serving.float32_trunk():
        assert serving.onnx_parity(frozen, variables, inputs, str(tmp_path / "f32")) <= PARITY
    # Rounded to float16 as the head was trained, activations that onnxruntime and XLA
    # compute a last bit apart can round one float16 step apart (measured 2.4e-4).
    rounded = serving.onnx_parity(frozen, variables, inputs, str(tmp_path / "f16"))
    assert rounded <= 1e-3
    assert exported.load_embedder(str(tmp_path / "f16")).info["freeze_until"] == \
        frozen.model.freeze_until


@pytest.mark.skipif(not (MLFW_ROOT / "val").is_dir(), reason="no MLFW val crops at "
                    f"{MLFW_ROOT / 'val'}")
def test_parity_on_real_val_faces(tmp_path):
    from bt_jax.benchmark import serving

    config = _tiny(crop=112)
    config.data.image_size = 128  # MLFW's 112 px crops enlarged, as for FaceNet (160 px)
    variables = embedder.load_weights(config, init="scratch").variables
    files = serving.val_files(str(MLFW_ROOT / "val"), 16)
    embed = exported.load_embedder(onnx_export.export_onnx(config, variables,
                                                           str(tmp_path / "val")))
    network = jax.jit(Network(config).embed_function(variables))
    assert serving.parity(embed, network, serving.decode(files, 112),
                          serving.decode(files, 128)) <= PARITY


def test_the_metadata_is_the_jax_exports_with_a_weights_digest(tiny_onnx):
    config, variables, out = tiny_onnx
    model = onnx.load(os.path.join(out, exported.ONNX_FILE))
    info = json.loads({p.key: p.value for p in model.metadata_props}["bt_jax"])
    assert {k: info[k] for k in embedding.preprocessing(config)} == \
        embedding.preprocessing(config)
    assert info["crop_size"] == CROP and info["image_size"] == 32
    assert info["fingerprint"] == embedding.fingerprint(config, variables)
    assert info["weights_sha256"] == onnx_embedder.weights_digest(model)
    assert "Pillow" in info["resize"] and info["feature_dim"] == 128
    inputs = model.graph.input[0].type.tensor_type
    assert [d.dim_value or d.dim_param for d in inputs.shape.dim][1:] == [CROP, CROP, 3]
    assert inputs.shape.dim[0].dim_param  # a symbolic batch


def _edited(out, tmp_path, edit) -> str:
    model = onnx.load(os.path.join(out, exported.ONNX_FILE))
    edit(model)
    folder = tmp_path / f"edited{len(os.listdir(tmp_path))}"
    folder.mkdir()
    onnx.save(model, str(folder / exported.ONNX_FILE))
    return str(folder)


def test_changed_weights_and_metadata_are_refused_by_name(tiny_onnx, tmp_path):
    out = tiny_onnx[2]

    def scale_a_weight(model):
        tensor = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        array = onnx.numpy_helper.to_array(tensor) * 1.01
        tensor.CopyFrom(onnx.numpy_helper.from_array(array, tensor.name))

    with pytest.raises(ValueError, match=r"weights have sha256 [0-9a-f]{64}, but its "
                                         r"metadata records [0-9a-f]{64}"):
        exported.load_embedder(_edited(out, tmp_path, scale_a_weight))

    def set_info(**changes):
        def edit(model):
            entry = next(p for p in model.metadata_props if p.key == "bt_jax")
            entry.value = json.dumps({**json.loads(entry.value), **changes})
        return edit

    with pytest.raises(ValueError, match="says crop_size 32, but the graph takes"):
        exported.load_embedder(_edited(out, tmp_path, set_info(crop_size=32)))
    with pytest.raises(ValueError, match="fingerprint is 7 .int., not a str"):
        exported.load_embedder(_edited(out, tmp_path, set_info(fingerprint=7)))
    with pytest.raises(ValueError, match="no 'bt_jax' metadata"):
        exported.load_embedder(_edited(out, tmp_path, lambda m: m.ClearField("metadata_props")))
    embed = exported.load_embedder(out)
    with pytest.raises(ValueError, match=r"uint8 \(N, 24, 24, 3\).*resizes them to 32 px"):
        embed(_crops(2, 32))


def test_an_export_of_one_format_is_replaced_by_the_other_only_when_asked(tiny_onnx,
                                                                          tmp_path):
    from bt_jax.identify import export

    config, variables, _ = tiny_onnx
    out = export.export_embedder(config, variables, str(tmp_path / "e"), platforms=("cpu",))
    with pytest.raises(FileExistsError, match="not empty; pass --overwrite"):
        onnx_export.export_onnx(config, variables, out)
    onnx_export.export_onnx(config, variables, out, overwrite=True)
    assert os.listdir(out) == [exported.ONNX_FILE]


def test_exports_onnx_reads_both_spellings_of_the_flag(tiny_onnx, tmp_path):
    out = tiny_onnx[2]
    assert onnx_embedder.exports_onnx(["identify.py", "query", f"--exported={out}"])
    assert onnx_embedder.exports_onnx(["identify.py", "query", "--exported", out, "x.png"])
    assert not onnx_embedder.exports_onnx(["identify.py", "query", f"--exported={tmp_path}"])
    assert not onnx_embedder.exports_onnx(["identify.py", "query", "--gallery", "g.npz"])


def test_the_docs_five_line_example_runs(tiny_onnx, tmp_path):
    doc = (REPO / "docs" / "onnx.md").read_text()
    example = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    assert len(example.strip().splitlines()) == 5
    exports = tmp_path / "exports"
    exports.mkdir()
    os.symlink(tiny_onnx[2], exports / "mlfw_onnx")
    Image.fromarray(_crops(1, CROP, seed=9)[0]).save(tmp_path / "face.jpg")
    crop = np.asarray(Image.open(tmp_path / "face.jpg").convert("RGB"))
    check = "\nnp.save('embedding.npy', embedding)\n"
    child = subprocess.run([sys.executable, "-c", example + check], cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    want = exported.load_embedder(tiny_onnx[2])(crop[None])[0]
    np.testing.assert_array_equal(np.load(tmp_path / "embedding.npy"), want)


# ----------------------------------------------------------------------------------------
# identify.py query --exported DIR on onnxruntime


def _people(root: Path, count=4, per_person=2, seed=0) -> Path:
    for p in range(count):
        folder = root / f"person{p}"
        folder.mkdir(parents=True)
        for i, crop in enumerate(_crops(per_person, CROP, seed=seed + 10 * p)):
            Image.fromarray(crop).save(folder / f"{i}.png")
    return root


# Stands in for jax, jaxlib and flax on the query's PYTHONPATH: importing any of them, in
# the query or in a process it starts (such as XLA's flag probe), leaves its name.
FAKE = """import os
with open(os.environ["FAKE_JAX_LOG"], "a") as f:
    f.write(__name__ + "\\n")
raise ImportError(__name__ + " was imported while serving from ONNX")
"""


def test_a_query_on_onnx_imports_no_jax_and_accepts_a_jax_gallery(tiny_onnx, tmp_path):
    config, variables, out = tiny_onnx
    people = _people(tmp_path / "people")
    identify = app.network_embedder(config, init="scratch")
    settings = config.identify
    gallery = app.enrol(identify, str(people), identify_config=settings, seed=0).gallery
    gallery.save(str(tmp_path / "gallery.npz"))
    fake = tmp_path / "fake"
    for name in ("jax", "jaxlib", "flax"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text(FAKE)
    code = textwrap.dedent(f"""
        import atexit, runpy, sys
        atexit.register(lambda: print("modules", sorted(
            m for m in sys.modules if m.split(".")[0] in ("jax", "jaxlib", "flax"))))
        sys.argv = ["scripts/identify.py", "query", "--gallery", {str(tmp_path / 'gallery.npz')!r},
                    "--exported", {out!r}, {str(people)!r}]
        runpy.run_path("scripts/identify.py", run_name="__main__")
    """)
    log = tmp_path / "imported.txt"
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{REPO}",
           "FAKE_JAX_LOG": str(log)}
    child = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                           text=True, timeout=120, env=env)
    assert child.returncode == 0, child.stderr[-2000:]
    assert not log.exists(), log.read_text()
    assert child.stdout.strip().splitlines()[-1] == "modules []"
    # Each enrolled crop is named as its own person, as the JAX embedder names it.
    named = dict(re.findall(r"(\S+\.png): (\S+) \(best", child.stdout))
    assert len(named) == 8 and all(f"/{who}/" in path for path, who in named.items())
    jax_answers = app.query(identify, gallery, sorted(named), identify_config=settings)
    onnx_answers = app.query(app.exported_embedder(out), gallery, sorted(named),
                             identify_config=settings)
    for a, b in zip(jax_answers.rows, onnx_answers.rows):
        assert a["identity"] == b["identity"] and abs(a["similarity"] - b["similarity"]) < 1e-5


def test_a_gallery_of_another_embedder_is_refused(tiny_onnx, tmp_path):
    from bt_jax.identify.gallery import Gallery

    config, _, out = tiny_onnx
    crop = _people(tmp_path / "people", count=1, per_person=1) / "person0" / "0.png"
    onnx = app.exported_embedder(out)
    other = "0" * 32  # another network's (or preprocessing's) fingerprint
    gallery = Gallery(np.ones((1, onnx.embed.feature_dim), np.float32), ["a"], [str(crop)],
                      other, onnx.preprocessing)
    with pytest.raises(ValueError, match=f"another model or preprocessing \\(fingerprint "
                                         f"{onnx.fingerprint}\\) than the gallery \\({other}"):
        app.query(onnx, gallery, [str(crop)], identify_config=config.identify)
