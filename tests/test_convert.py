"""Weight conversion: numerical parity with a PyTorch reference, and clear errors on bad input.

The parity tests compile ResNet-50 twice (224 and 244 inputs), shared through module-scope
fixtures; the bad-input tests use the tiny architecture, whose names follow the same scheme.
"""

import json
import os
import pickle
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bt_jax.weights import convert
from bt_jax.weights.slots import expected_source_shapes
from bt_jax.weights.sources import write_release_pickle
from bt_jax.models.barlow import BarlowTwins, Projector
from bt_jax.models.resnet import resnet50
from bt_jax.weights.pretrained import load_pretrained

TORCH_REASON = "parity tests need PyTorch: pip install torch==2.13.0 (or the 'test' extra)"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-4  # relative error ||out - ref|| / ||ref|| in float32


def _torch():
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    from bt_jax.reference import torch_models  # imports torch itself

    return torch, torch_models


def rel_error(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def _images(size: int, seed: int) -> np.ndarray:
    """Two NHWC images in the Caffe input range (0-255 minus a mean)."""
    return np.random.default_rng(seed).uniform(-128, 128, (2, size, size, 3)).astype(np.float32)


def _torch_run(torch, fn, images: np.ndarray):
    with torch.no_grad():
        out = fn(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()))
    return [o.numpy() for o in out] if isinstance(out, tuple) else out.numpy()


# ----------------------------------------------------------------------------------------
# Parity fixtures: one random reference network, written once in each source format.


@pytest.fixture(scope="module")
def reference():
    torch, ref = _torch()
    torch.manual_seed(0)
    return ref.randomize(ref.CaffeResNet50(num_classes=8631), seed=1)


@pytest.fixture(scope="module")
def release_pickle(reference, tmp_path_factory):
    """The reference's state dict in the release format, num_batches_tracked included."""
    path = str(tmp_path_factory.mktemp("vggface2") / "resnet50_ft_weight.pkl")
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    assert "bn1.num_batches_tracked" in state
    write_release_pickle(path, state)
    return path


@pytest.fixture(scope="module")
def barlow_reference(reference):
    torch, ref = _torch()
    backbone = ref.CaffeResNet50(num_classes=None)
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    backbone.load_state_dict(state)
    model = ref.BarlowTwinsReference(backbone, [8192, 64, 32])
    ref.randomize(model.projector, seed=2)
    ref.randomize(model.bn, seed=3)
    return model.eval()


@pytest.fixture(scope="module")
def barlow_pth(barlow_reference, tmp_path_factory):
    """A DataParallel-style checkpoint: every key starts with 'module.'."""
    torch, _ = _torch()
    path = str(tmp_path_factory.mktemp("barlow") / "checkpoint.pth")
    state = {f"module.{k}": v for k, v in barlow_reference.state_dict().items()}
    torch.save({"epoch": 3, "model": state}, path)
    return path


def _features_and_logits(model, variables, x):
    """Both outputs in one compiled call: the features are what the fc layer receives."""
    seen = {}

    def grab(next_fun, args, kwargs, context):
        if context.module.name == "fc" and context.method_name == "__call__":
            seen["features"] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
        logits = model.apply(variables, x)
    return seen["features"], logits


# ----------------------------------------------------------------------------------------
# Parity.


def test_vggface2_pickle_parity_at_224(reference, release_pickle):
    torch, _ = _torch()
    conversion = convert.convert(release_pickle, keep_fc=True)
    assert conversion.manifest["architecture"]["num_classes"] == 8631
    assert conversion.manifest["dropped"] == []
    assert conversion.manifest["normalization"] == "vggface2"
    assert conversion.manifest["ignored_num_batches_tracked"] == 53

    images = _images(224, seed=10)
    model = resnet50(num_classes=8631)
    run = jax.jit(lambda v, x: _features_and_logits(model, v, x))
    features, logits = run({k: v["backbone"] for k, v in conversion.variables.items()}, images)
    ref_features, ref_logits = _torch_run(
        torch, lambda x: (reference.features(x), reference(x)), images)

    assert features.shape == (2, 2048) and logits.shape == (2, 8631)
    errors = rel_error(features, ref_features), rel_error(logits, ref_logits)
    print(f"\n224: relative error features {errors[0]:.2e}, fc logits {errors[1]:.2e}")
    assert max(errors) < TOLERANCE


@pytest.mark.slow
def test_barlow_pth_and_pickle_parity_at_244(reference, barlow_reference, barlow_pth,
                                             release_pickle):
    """The .pth (backbone + projector) and the pickle (fc dropped) against PyTorch at 244."""
    torch, _ = _torch()
    from_pth = convert.convert(barlow_pth)
    manifest = from_pth.manifest
    assert manifest["architecture"]["projector"] == "64-32"
    assert manifest["architecture"]["projector_in_features"] == 8192
    assert manifest["dropped"] == ["bn.running_mean", "bn.running_var"]
    assert manifest["converted"]["parts"] == ["backbone", "projector"]

    images = _images(244, seed=11)
    model = BarlowTwins(resnet50(), Projector((64, 32)))
    run = jax.jit(lambda v, x: model.apply(v, x, method=_features_and_embedding))
    features, embedding = run(from_pth.variables, images)
    ref_features, ref_embedding = _torch_run(
        torch, lambda x: (barlow_reference.backbone(x), barlow_reference.embed(x)), images)
    # The pickle's backbone in place of the .pth one: same shapes, so no second compile.
    from_pickle = convert.convert(release_pickle).variables
    assert jax.tree.structure(from_pickle["params"]["backbone"]) == jax.tree.structure(
        from_pth.variables["params"]["backbone"])
    pickle_features, _ = run({k: {**from_pth.variables[k], "backbone": v["backbone"]}
                              for k, v in from_pickle.items()}, images)

    assert features.shape == (2, 8192) and embedding.shape == (2, 32)
    errors = [rel_error(features, ref_features), rel_error(embedding, ref_embedding),
              rel_error(pickle_features, ref_features)]
    print(f"\n244: relative error .pth features {errors[0]:.2e}, .pth embed {errors[1]:.2e}, "
          f"pickle features {errors[2]:.2e}")
    assert max(errors) < TOLERANCE


def _features_and_embedding(module, x):
    features = module.backbone(x)
    return features, module.projector(features)


def test_saved_conversion_loads_into_the_training_model(barlow_pth, tmp_path):
    conversion = convert.convert(barlow_pth)
    out = convert.save(conversion, str(tmp_path / "converted" / "bt"))
    model = BarlowTwins(resnet50(), Projector((64, 32)))
    x = jnp.zeros((1, 244, 244, 3))
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), x, x, train=False))
    params, batch_stats = load_pretrained(out, target["params"], target["batch_stats"])
    for got, want in [(params, conversion.variables["params"]),
                      (batch_stats, conversion.variables["batch_stats"])]:
        jax.tree.map(np.testing.assert_array_equal, got, want)
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f) == conversion.manifest


# ----------------------------------------------------------------------------------------
# Bad input: each error names the problem and the fix.


def _tiny_state(seed: int = 0):
    """A release-format state dict for the tiny architecture, fc and counters included."""
    rng = np.random.default_rng(seed)
    state = {k: rng.normal(size=s).astype(np.float32)
             for k, s in expected_source_shapes("tiny", num_classes=5).items()}
    state["bn1.num_batches_tracked"] = np.array(7, np.int64)
    return state


def _write(tmp_path, state, name="weights.pkl") -> str:
    path = str(tmp_path / name)
    write_release_pickle(path, state)
    return path


def test_tiny_pickle_converts_with_fc_dropped(tmp_path):
    state = _tiny_state()
    conversion = convert.convert(_write(tmp_path, state), arch="tiny")
    params = conversion.variables["params"]["backbone"]
    assert "fc" not in params and conversion.manifest["dropped"] == ["fc.bias", "fc.weight"]
    np.testing.assert_array_equal(params["layer2_0"]["downsample_conv"]["kernel"],
                                  state["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(conversion.variables["batch_stats"]["backbone"]["bn1"]["var"],
                                  state["bn1.running_var"])


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.pop("layer1.0.bn2.running_var"), "1 missing entries that tiny needs: "
                                                  "layer1.0.bn2.running_var"),
    (lambda s: s.update({"layer5.0.conv1.weight": np.zeros((1,), np.float32)}),
     "1 unexpected entries that tiny has no place for: layer5.0.conv1.weight"),
])
def test_missing_and_unexpected_keys_are_named(tmp_path, edit, expected):
    state = _tiny_state()
    edit(state)
    with pytest.raises(ValueError, match=expected):
        convert.convert(_write(tmp_path, state), arch="tiny")


def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    state = _tiny_state()
    state["layer1.0.conv1.weight"] = np.zeros((8, 9, 1, 1), np.float32)
    with pytest.raises(ValueError) as info:
        convert.convert(_write(tmp_path, state), arch="tiny")
    assert ("layer1.0.conv1.weight: file (8, 9, 1, 1), tiny expects (8, 8, 1, 1) "
            "(Flax backbone/layer1_0/conv1/kernel (1, 1, 8, 8))") in str(info.value)


def test_nan_is_refused_with_its_key(tmp_path):
    state = _tiny_state()
    state["layer3.0.bn2.running_var"][1] = np.nan
    with pytest.raises(ValueError, match=r"layer3\.0\.bn2\.running_var holds 1 NaN/Inf"):
        convert.convert(_write(tmp_path, state), arch="tiny")


def test_torch_save_file_given_as_pickle(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_REASON)
    path = str(tmp_path / "resnet50_ft_weight.pkl")
    torch.save({k: torch.from_numpy(v) for k, v in _tiny_state().items()}, path)
    with pytest.raises(ValueError, match=r"is a torch.save \(zip\) file.*name it \*\.pth"):
        convert.convert(path, arch="tiny")
    # Renamed as the message says, it converts: a bare ResNet state dict, release layout.
    os.rename(path, path[:-len(".pkl")] + ".pth")
    manifest = convert.convert(path[:-len(".pkl")] + ".pth", arch="tiny").manifest
    assert manifest["source"]["format"] == "ResNet state dict (.pth)"
    assert manifest["normalization"] == "vggface2" and manifest["dropped"] == ["fc.bias", "fc.weight"]


@pytest.mark.parametrize("content, expected", [
    (b"\x00garbage bytes", "is not a VGGFace2 weight pickle"),
    (b"", "is empty"),
    # A pickle that would call os.getcwd(): refused before anything runs.
    (b"\x80\x02cos\ngetcwd\n)R.", "refers to os.getcwd"),
    (pickle.dumps([1, 2], protocol=2), "holds a list, not a dict"),
])
def test_files_that_are_not_the_release_pickle(tmp_path, content, expected):
    path = tmp_path / "weights.pkl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=expected):
        convert.convert(str(path), arch="tiny")


def test_existing_output_needs_overwrite(tmp_path):
    source, out = _write(tmp_path, _tiny_state()), str(tmp_path / "out")
    convert.convert_file(source, out, arch="tiny")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        convert.convert_file(source, out, arch="tiny")
    manifest = convert.convert_file(source, out, arch="tiny", keep_fc=True, overwrite=True)
    assert manifest["architecture"]["num_classes"] == 5
    assert sorted(os.listdir(tmp_path)) == ["out", "weights.pkl"]  # no staging left behind


def test_script_reports_bad_input_without_traceback(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(b"not a pickle")
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "convert_weights.py"),
         f"--source={path}", f"--out={tmp_path / 'out'}", "--arch=tiny"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    assert result.returncode == 1
    assert "error: " in result.stderr and "is not a VGGFace2 weight pickle" in result.stderr
    assert "Traceback" not in result.stderr and not os.path.exists(tmp_path / "out")
