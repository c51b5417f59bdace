"""Skin tone (ITA) against colours known exactly: patches of given L*a*b*, gray and skinless
images, category edges, identity summaries, the CSV as the evaluator's groups file, the
script, and consistency on the real MLFW val split when it is present."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from skimage import color

from bt_jax.evaluation import skin_tone as st
from bt_jax.data import faces, masks, synthetic
from bt_jax.evaluation.groups import read_groups

REPO = Path(__file__).resolve().parents[1]
MLFW_VAL = REPO.parent / "shared" / "data" / "mlfw" / "val"
SIZE = 112

# One skin colour (L*, a*, b*) per category, light to dark.
SKIN = {"very light": (75, 8, 12), "light": (66, 10, 16), "intermediate": (60, 11, 15),
        "tan": (55, 13, 20), "brown": (45, 14, 22), "dark": (30, 12, 18)}


def _rgb(lab) -> np.ndarray:
    return color.lab2rgb(np.asarray([[lab]], float))[0, 0]


def _face(skin_lab, background_rgb, mask_lab=None) -> np.ndarray:
    """A float image: a skin rectangle on a background, a mask over its lower half."""
    image = np.empty((SIZE, SIZE, 3))
    image[:] = background_rgb
    image[int(0.1 * SIZE):, int(0.25 * SIZE):int(0.75 * SIZE)] = _rgb(skin_lab)
    if mask_lab is not None:
        image[int(0.55 * SIZE):, int(0.25 * SIZE):int(0.75 * SIZE)] = _rgb(mask_lab)
    return image


def _expected_ita(lab) -> float:
    return float(st.ita_degrees(lab[0], lab[2]))


# ------------------------------------------------------------------------ known colours


@pytest.mark.parametrize("name", list(SKIN))
def test_skin_patch_gives_its_ita_on_a_blue_background(name):
    lab = SKIN[name]
    tone, mask = st.measure(_face(lab, _rgb((55, 10, -45))))
    assert tone.status == st.OK
    assert abs(tone.ita - _expected_ita(lab)) < 1.0
    assert st.category(tone.ita) == name
    assert not mask[:, :int(0.25 * SIZE)].any()      # the background is left out


@pytest.mark.parametrize("name", list(SKIN))
def test_skin_coloured_background_is_left_out_by_otsu(name):
    lab = SKIN[name]
    # A wall of another skin-like colour that the colour rules alone would accept.
    wall = (80, 10, 20) if lab[0] < 55 else (25, 10, 16)
    assert st.skin_rules(_rgb(wall)[None, None]).all()
    tone, mask = st.measure(_face(lab, _rgb(wall)))
    assert abs(tone.ita - _expected_ita(lab)) < 1.0
    assert not mask[:, :int(0.25 * SIZE)].any()


def test_skin_coloured_mask_is_left_out():
    lab, beige_mask = SKIN["tan"], (78, 6, 14)       # ITA 63: would pull the tone up
    assert st.skin_rules(_rgb(beige_mask)[None, None]).all()
    tone, mask = st.measure(_face(lab, _rgb((55, 10, -45)), mask_lab=beige_mask))
    assert abs(tone.ita - _expected_ita(lab)) < 1.0
    assert not mask[int(0.5 * SIZE):].any()


def test_noisy_uint8_photo_keeps_its_ita():
    lab = SKIN["light"]
    image = _face(lab, _rgb((55, 10, -45)))
    noisy = image + np.random.default_rng(0).normal(0, 0.02, image.shape)
    tone, _ = st.measure((np.clip(noisy, 0, 1) * 255 + 0.5).astype(np.uint8))
    assert abs(tone.ita - _expected_ita(lab)) < 1.0


# ------------------------------------------------------------------------ unknowns


def test_gray_photo_is_unknown_even_with_a_coloured_mask_and_noise():
    gray = color.rgb2gray(_face(SKIN["light"], _rgb((40, 5, -30))))
    image = np.repeat(gray[..., None], 3, axis=-1)
    image[int(0.55 * SIZE):] = _rgb((70, -20, -30))  # a pasted blue mask
    image += np.random.default_rng(0).normal(0, 0.03, image.shape)  # per-channel noise
    tone, mask = st.measure(np.clip(image, 0, 1))
    assert (tone.status, tone.ita, tone.skin_pixels) == (st.GRAY, None, 0)
    assert not mask.any()


def test_image_without_skin_is_unknown():
    image = _face((60, -40, 20), _rgb((55, 10, -45)))  # a green "face" on blue
    tone, _ = st.measure(image)
    assert tone.status == st.NO_SKIN and tone.ita is None


def test_bad_image_shape_and_settings_name_the_fix():
    with pytest.raises(ValueError, match="convert grayscale"):
        st.measure(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="mask_top"):
        st.Settings(mask_top=0.0)


# ------------------------------------------------------------------------ categories


@pytest.mark.parametrize("ita, expected", [
    (90.0, "very light"), (55.01, "very light"), (55.0, "light"), (41.01, "light"),
    (41.0, "intermediate"), (28.0, "tan"), (10.01, "tan"), (10.0, "brown"),
    (-29.99, "brown"), (-30.0, "dark"), (-90.0, "dark"), (None, st.UNKNOWN),
    (float("nan"), st.UNKNOWN)])
def test_category_edges_belong_to_the_darker_side(ita, expected):
    assert st.category(ita) == expected


def test_identity_summary_median_iqr_and_unknown_counts():
    ok = [st.ImageTone(st.OK, ita, 100) for ita in (20.0, 30.0, 40.0, 50.0, 60.0)]
    gray, skinless = st.ImageTone(st.GRAY, None, 0), st.ImageTone(st.NO_SKIN, None, 3)
    rows = st.summarize(["b"] * 5 + ["b", "a", "a"], ok + [gray, gray, skinless])
    a, b = rows
    assert (a.identity, a.category, a.median_ita, a.images_used) == ("a", st.UNKNOWN, None, 0)
    assert (a.images_gray, a.images_no_skin, a.images_unknown) == (1, 1, 2)
    assert (b.category, b.median_ita, b.ita_iqr, b.skin_pixels) == ("intermediate", 40.0,
                                                                     20.0, 500)
    assert (b.images_used, b.images_unknown) == (5, 1)
    assert st.category_counts(rows)[st.UNKNOWN] == 1


def test_csv_is_the_evaluators_groups_file(tmp_path):
    tones = [st.ImageTone(st.OK, 60.0, 10), st.ImageTone(st.GRAY, None, 0),
             st.ImageTone(st.OK, -40.0, 10)]
    path = tmp_path / "tone.csv"
    st.write_csv(st.summarize(["x", "y", "z"], tones), str(path))
    assert path.read_text().splitlines()[0] == ",".join(st.CSV_COLUMNS)
    assert read_groups(str(path)) == {"x": "very light", "y": st.UNKNOWN, "z": "dark"}


def test_consistency_counts_pairs_by_source():
    itas = [60.0, 45.0, 30.0, 60.0, -50.0, None]  # very light, light, intermediate, ..., dark
    tones = [st.ImageTone(st.OK if i is not None else st.GRAY, i, 1) for i in itas]
    identities, sources = ["a", "a", "a", "b", "b", "b"], [1, 1, 2, 1, 2, 3]
    result = st.consistency(identities, sources, tones)
    # a: (1,1) same source, same category is 0 of 1 but adjacent; (1,2) x2: gaps 2 and 1.
    assert result["same_source"] == {"pairs": 1, "same": 0.0, "within_one": 1.0}
    assert result["different_source"]["pairs"] == 3             # a: 2, b: 1 (gap 5)
    assert result["different_source"]["within_one"] == pytest.approx(1 / 3)
    assert 0.0 < result["chance"]["same"] < result["chance"]["within_one"] <= 1.0


# ------------------------------------------------------------------------ end to end


def test_synthetic_faces_are_ranked_by_their_skin_colour():
    from scipy.stats import spearmanr

    truth, measured = [], []
    for index in range(24):
        ident, photo = faces.sample_identity(0, index), faces.sample_photo(0, index, 1)
        mask = masks.sample_mask(0, index, 1, 1)
        image = synthetic.render_variants(ident, photo, [mask], SIZE)[1]
        tone, _ = st.measure(image)
        if photo.grayscale:
            assert tone.status == st.GRAY
            continue
        truth.append(_expected_ita(color.rgb2lab(np.asarray([[ident.skin]]))[0, 0]))
        measured.append(tone.ita)
    # Tint, brightness and shading move each tone (~6 degrees); the order must survive.
    assert spearmanr(truth, measured).statistic > 0.9


def test_script_writes_csv_and_sheet(tmp_path):
    synthetic.write_synthetic_dataset(tmp_path / "faces", num_identities=4,
                                      sources_per_identity=2, masked_variants=1,
                                      image_size=SIZE, progress=False)
    out = tmp_path / "tone.csv"
    done = subprocess.run([sys.executable, "scripts/skin_tone.py", "--data_dir",
                           str(tmp_path / "faces"), "--out_csv", str(out),
                           "--sheet_images", "6"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(read_groups(str(out))) == 4
    assert (tmp_path / "tone_sheet.png").stat().st_size > 0
    assert "identities by category" in done.stdout


@pytest.mark.skipif(not MLFW_VAL.is_dir(), reason=f"real MLFW val split not found at "
                    f"{MLFW_VAL} (see shared/data/README.md); nothing to measure")
def test_real_val_masks_do_not_move_the_tone():
    from bt_jax.data.folder import scan_folder

    records = scan_folder(MLFW_VAL, min_images_per_identity=1)[:200]
    tones = st.measure_records(records, SIZE, progress=False)
    result = st.consistency([r.identity for r in records], [r.source for r in records], tones)
    print("consistency on", len(records), "val images:", result)
    assert sum(t.status == st.OK for t in tones) > 0.8 * len(tones)
    # Variants of one photo differ only by the pasted mask, which is left out.
    assert result["same_source"]["same"] > 0.95
    assert result["different_source"]["within_one"] > result["chance"]["within_one"]
