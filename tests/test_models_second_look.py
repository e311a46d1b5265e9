"""``models.second_look``: where the Analyzer looks again, and what it does with what it sees there
(class logits averaged with the crop's, outline from the crop's lesion probability, presence kept)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonopacs.models.analyzer import DEFAULT_WEIGHTS, Analyzer
from sonopacs.models.second_look import SecondLook

DATA = Path(__file__).parent / "data" / "bus-bra"


def _region(shape: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_the_crop_is_a_square_around_the_region_scaled_by_the_fraction_and_kept_inside() -> None:
    look = SecondLook(fraction=0.5, min_side=48)
    rows, cols = look.crop(_region((400, 600), 180, 220, 280, 340))  # 40 x 60: side 120, centred
    assert (rows.start, rows.stop, cols.start, cols.stop) == (140, 260, 250, 370)
    rows, cols = look.crop(_region((400, 600), 0, 40, 560, 600))  # at a corner: moved inside
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 80, 520, 600)
    rows, cols = look.crop(_region((400, 600), 200, 205, 300, 305))  # tiny: at least min_side
    assert rows.stop - rows.start == 48 and cols.stop - cols.start == 48
    assert look.crop(_region((400, 600), 50, 350, 100, 500)) is None  # would cover most of the image
    assert look.crop(np.zeros((400, 600), bool)) is None


def test_the_manifest_switches_it_on_and_bad_settings_are_refused() -> None:
    assert SecondLook.from_dict(None) is None and SecondLook.from_dict({}) is None
    assert SecondLook.from_dict({"fraction": 0.35}) == SecondLook(fraction=0.35)
    for bad in ({"fraction": 0.0}, {"fraction": 1.5}, {"max_cover": 0.0}):
        with pytest.raises(ValueError, match="second_look"):
            SecondLook.from_dict(bad)


def _weights(folder: Path, second_look: dict[str, float] | None) -> Path:
    """The shipped primary network alone (no scope bank), with or without a second look."""
    folder.mkdir(parents=True)
    manifest = json.loads((DEFAULT_WEIGHTS / "model.json").read_text())
    shutil.copy(DEFAULT_WEIGHTS / "model.pt", folder / "model.pt")
    manifest["ensemble_members"] = []
    manifest.pop("second_look", None)
    if second_look:
        manifest["second_look"] = second_look
    (folder / "model.json").write_text(json.dumps(manifest))
    return folder


def _wide_fields() -> list[np.ndarray]:
    """BUS-BRA's close crops set into a field three times as wide and twice as high, as a scanner's
    wide field shows a small lesion."""
    out = []
    for p in sorted(DATA.glob("bus_*.jpg")):
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        assert img is not None
        h, w = img.shape
        field = np.full((2 * h, 3 * w), int(np.median(img)), np.uint8)
        field[h // 2: h // 2 + h, w: 2 * w] = img
        out.append(field)
    return out


def test_the_second_look_averages_the_crops_logits_and_keeps_the_first_looks_presence(tmp_path: Path) -> None:
    images = _wide_fields()
    first = Analyzer.load(_weights(tmp_path / "first", None), "cpu", scope_gate=False)
    again = Analyzer.load(_weights(tmp_path / "again", {"fraction": 0.5}), "cpu", scope_gate=False)
    looked = 0
    for img, a, b in zip(images, first.analyze_batch(images), again.analyze_batch(images), strict=True):
        assert a.extra["second_look"] is None
        # presence is the first look's: the same detection, the same decision
        assert b.extra["lesion_present"] == a.extra["lesion_present"]
        assert b.extra["lesion_area_fraction"] == a.extra["lesion_area_fraction"]
        if b.extra["second_look"] is None:
            assert b.extra["logits"] == pytest.approx(a.extra["logits"], abs=1e-6)
            assert np.array_equal(a.mask, b.mask)
            continue
        looked += 1
        y0, y1, x0, x1 = b.extra["second_look"]
        assert (y1 - y0) * (x1 - x0) < 0.6 * img.size
        crop = first.analyze(img[y0:y1, x0:x1])
        np.testing.assert_allclose(b.extra["logits"], (np.array(a.extra["logits"]) + crop.extra["logits"]) / 2,
                                   atol=1e-4)
        if b.extra["lesion_present"]:  # the outline is drawn, and inside the crop where the crop found one
            assert b.mask.any()
            outside = b.mask.copy()
            outside[y0:y1, x0:x1] = False
            assert not outside.any() or np.array_equal(b.mask, a.mask)
    assert looked >= 2


def test_a_region_the_first_look_saw_at_full_scale_is_not_looked_at_again(tmp_path: Path) -> None:
    """BUS-BRA's own close crops: the lesion fills much of the image, so the square would cover most of it."""
    images = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(DATA.glob("bus_*.jpg"))]
    first = Analyzer.load(_weights(tmp_path / "first", None), "cpu", scope_gate=False).analyze_batch(images)
    again = Analyzer.load(_weights(tmp_path / "again", {"fraction": 0.9, "max_cover": 0.05}), "cpu",
                          scope_gate=False).analyze_batch(images)
    for a, b in zip(first, again, strict=True):
        assert b.extra["second_look"] is None
        assert b.probabilities == pytest.approx(a.probabilities, abs=1e-6)
        assert np.array_equal(a.mask, b.mask)
