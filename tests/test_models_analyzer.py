"""The shipped weights load and give well-formed, deterministic results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from sonopacs.models import CLASSES, Analyzer
from sonopacs.models.analyzer import DEFAULT_WEIGHTS

DATA = Path(__file__).parent / "data" / "bus-bra"


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer.load(device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    img = cv2.imread(str(DATA / "bus_0001-l.jpg"), cv2.IMREAD_GRAYSCALE)
    assert img is not None
    return img


def test_metadata(analyzer: Analyzer) -> None:
    assert analyzer.name and analyzer.version
    assert set(analyzer.operating_points) == {"default", "high_sensitivity"}
    assert 0 < analyzer.operating_points["high_sensitivity"] <= analyzer.operating_points["default"] < 1


def test_result_is_well_formed(analyzer: Analyzer, image: np.ndarray) -> None:
    r = analyzer.analyze(image, spacing_mm=(0.1, 0.12))
    assert list(r.probabilities) == list(CLASSES)
    assert abs(sum(r.probabilities.values()) - 1) < 1e-6
    # normal exactly when no lesion is present (models.presence), else the likelier lesion class
    present = r.label != "normal"
    assert r.mask.any() == present
    if present:
        assert r.label == max(("benign", "malignant"), key=r.probabilities.__getitem__)
    assert r.malignancy_probability == r.probabilities["malignant"]
    for name, t in analyzer.operating_points.items():
        assert r.decisions[name] == (present and r.malignancy_probability >= t)
    assert r.mask.shape == image.shape and r.mask.dtype == bool
    assert r.heatmap.shape == image.shape and r.heatmap.dtype == np.float32
    assert r.heatmap.min() >= 0 and r.heatmap.max() <= 1
    assert 0 <= r.uncertainty <= 0.5
    assert (r.model_name, r.model_version) == (analyzer.name, analyzer.version)
    if r.mask.any():
        assert r.lesion is not None and r.lesion.area_px == int(r.mask.sum())
        assert r.lesion.long_axis_mm is not None and r.lesion.long_axis_mm >= r.lesion.short_axis_mm  # type: ignore[operator]
        assert r.lesion.area_mm2 == pytest.approx(r.lesion.area_px * 0.1 * 0.12)
        rows, cols = zip(*r.lesion.contour, strict=True)
        assert min(rows) >= 0 and max(rows) < image.shape[0] and max(cols) < image.shape[1]


def test_known_lesion_is_found(analyzer: Analyzer, image: np.ndarray) -> None:
    """A training image with a large malignant lesion: the mask must overlap the reference mask."""
    truth = cv2.imread(str(DATA / "mask_0001-l.png"), cv2.IMREAD_GRAYSCALE) > 0
    r = analyzer.analyze(image)
    inter = np.logical_and(r.mask, truth).sum()
    assert 2 * inter / (r.mask.sum() + truth.sum()) > 0.5


def test_deterministic_and_batch_equals_single(analyzer: Analyzer, image: np.ndarray) -> None:
    other = cv2.imread(str(DATA / "bus_0056-r.jpg"), cv2.IMREAD_GRAYSCALE)
    a = analyzer.analyze(image)
    b = analyzer.analyze(image)
    batch = analyzer.analyze_batch([image, other], [None, (0.1, 0.1)])
    assert a.probabilities == b.probabilities
    assert np.array_equal(a.mask, b.mask) and np.array_equal(a.heatmap, b.heatmap)
    assert len(batch) == 2 and batch[1].mask.shape == other.shape
    for k in CLASSES:
        assert batch[0].probabilities[k] == pytest.approx(a.probabilities[k], abs=1e-5)
    assert a.lesion is None or a.lesion.long_axis_mm is None  # no spacing, no mm


def test_rgb_and_odd_shapes(analyzer: Analyzer, image: np.ndarray) -> None:
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    assert analyzer.analyze(rgb).probabilities == pytest.approx(analyzer.analyze(image).probabilities, abs=1e-6)
    tall = np.ascontiguousarray(image[:, :40])
    r = analyzer.analyze(tall)
    assert r.mask.shape == tall.shape and r.heatmap.shape == tall.shape
    assert analyzer.analyze_batch([]) == []


def test_net_stays_in_eval_mode(analyzer: Analyzer, image: np.ndarray) -> None:
    """MONAI's hook wrapper used to switch the net back to train mode after each call."""
    analyzer.analyze(image)
    assert not any(m.training for m in analyzer.net.modules())


def _direct_cam(analyzer: Analyzer, image: np.ndarray, class_idx: int) -> np.ndarray:
    """CAM computed here from the head weights (for this pooled linear head Grad-CAM == CAM),
    mirror-averaged and mapped back to the input: an independent reference for the heat map."""
    import torch

    from sonopacs.models.transforms import letterbox_image, normalize_batch, to_gray, to_model_input

    lb, box = letterbox_image(to_gray(image), analyzer.size)
    x = to_model_input(lb)[None]
    with torch.no_grad():
        deep = analyzer.net.unet.encoder(normalize_batch(torch.cat([x, x.flip(-1)]), *analyzer.net.input_norm))[-1]
        w = analyzer.net.head[-1].weight[class_idx]
        cam = torch.relu(torch.einsum("c,bchw->bhw", w, deep))[:, None]
        cam = torch.nn.functional.interpolate(cam, size=(analyzer.size,) * 2, mode="bilinear")[:, 0].numpy()
    return box.unletterbox(((cam[0] + cam[1][:, ::-1]) / 2).astype(np.float32))


def test_heatmap_is_the_class_activation_not_its_inverse(analyzer: Analyzer, image: np.ndarray) -> None:
    """MONAI's default CAM post-processing maps (min, max) -> (1, 0); the shipped heat map was the
    inverse of the evidence (hot at the image edges). It must follow the evidence."""
    r = analyzer.analyze(image)
    ref = _direct_cam(analyzer, image, CLASSES.index(r.label))
    corr = float(np.corrcoef(r.heatmap.ravel(), ref.ravel())[0, 1])
    assert corr > 0.99
    assert r.heatmap[np.unravel_index(int(np.argmax(ref)), ref.shape)] == pytest.approx(1.0, abs=0.02)


def test_heatmap_explains_the_reported_label_not_the_networks_own_choice(analyzer: Analyzer, image: np.ndarray,
                                                                       tmp_path: Path) -> None:
    """The label comes from the calibrated ensemble, the presence rule and the second look; the heat
    map must explain that label, not the class the primary network alone would pick. A class bias
    that makes the other lesion class the reported one must move the map to that class."""
    import torch

    from sonopacs.models.transforms import letterbox_image, to_gray, to_model_input

    lb, _ = letterbox_image(to_gray(image), analyzer.size)
    x = to_model_input(lb)[None]
    with torch.no_grad():
        own = analyzer.net(torch.cat([x, x.flip(-1)]))[0].mean(0)
    other = 1 if int(own[1:].argmax()) == 1 else 2  # the lesion class the network itself does not favour
    wdir = tmp_path / "biased"
    shutil.copytree(DEFAULT_WEIGHTS, wdir)
    manifest = json.loads((wdir / "model.json").read_text())
    bias = [0.0, 0.0, 0.0]
    bias[other] = 12.0
    manifest["calibration"]["bias"] = bias
    (wdir / "model.json").write_text(json.dumps(manifest))
    r = Analyzer.load(wdir, device="cpu").analyze(image)
    assert r.label == CLASSES[other]
    mine = own.argmax().item()
    assert mine != other  # the network alone would have explained another class
    right = float(np.corrcoef(r.heatmap.ravel(), _direct_cam(analyzer, image, other).ravel())[0, 1])
    wrong = float(np.corrcoef(r.heatmap.ravel(), _direct_cam(analyzer, image, mine).ravel())[0, 1])
    assert right > 0.99 and wrong < right - 0.005


def test_heatmap_mass_concentrates_on_the_lesion(analyzer: Analyzer) -> None:
    """On the six committed BUS-BRA samples the heat map's mass lies on the (dilated) reference
    lesion more than a uniform map's would, and less on the outer frame (before the fix: 0.55x and
    1.4x the uniform share; after: 1.6x and 0.56x)."""
    mass_in, area_in, mass_edge, area_edge = [], [], [], []
    for row in (DATA / "index.csv").read_text().splitlines()[1:]:
        name, _, mask_name, _ = row.split(",")
        img = cv2.imread(str(DATA / name), cv2.IMREAD_GRAYSCALE)
        truth = cv2.imread(str(DATA / mask_name), cv2.IMREAD_GRAYSCALE) > 0
        r = max(1, round(0.05 * max(truth.shape)))
        region = cv2.dilate(truth.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1,) * 2)) > 0
        edge = np.ones_like(region)
        edge[r:-r, r:-r] = False
        heat = analyzer.analyze(img).heatmap.astype(np.float64)
        mass_in.append(heat[region].sum() / heat.sum())
        mass_edge.append(heat[edge].sum() / heat.sum())
        area_in.append(region.mean())
        area_edge.append(edge.mean())
    assert np.mean(mass_in) > 1.3 * np.mean(area_in)
    assert np.mean(mass_edge) < 0.8 * np.mean(area_edge)


def _paired_weights(root: Path) -> Path:
    """A weights folder whose mask comes from a second network: the shipped primary, paired with
    a copy of itself that letterboxes to 192 px under another name (so its masks differ)."""
    skip = shutil.ignore_patterns("segmentation")
    wdir, seg = root / "paired", root / "paired" / "segmentation"
    shutil.copytree(DEFAULT_WEIGHTS, wdir, ignore=skip)
    shutil.copytree(DEFAULT_WEIGHTS, seg, ignore=skip)
    seg_manifest = json.loads((seg / "model.json").read_text())
    seg_manifest.update(name=seg_manifest["name"] + "-seg", image_size=192)
    seg_manifest.pop("segmentation_weights", None)
    seg_manifest["ensemble_members"] = []  # a segmenter is one network (the shipped folder may be an ensemble)
    (seg / "model.json").write_text(json.dumps(seg_manifest))
    manifest = json.loads((wdir / "model.json").read_text())
    manifest["segmentation_weights"] = "segmentation"
    (wdir / "model.json").write_text(json.dumps(manifest))
    return wdir


def test_mask_comes_from_the_segmentation_network(tmp_path: Path) -> None:
    """A manifest naming ``segmentation_weights`` pairs the classifier with a separate segmenter:
    the mask is the segmenter's, everything else the classifier's (as if it ran alone)."""
    wdir = _paired_weights(tmp_path)
    paired = Analyzer.load(wdir, device="cpu")
    assert paired.segmenter is not None
    seg_alone = Analyzer.load(wdir / "segmentation", device="cpu")
    cls_alone = Analyzer.load(wdir, device="cpu")
    cls_alone.segmenter, cls_alone.net.segment = None, True
    for member in cls_alone.members:  # an ensemble's members decode with the primary network
        member.segment = True
    img = cv2.imread(str(DATA / "bus_0264-l.jpg"), cv2.IMREAD_GRAYSCALE)
    both, s, c = paired.analyze(img), seg_alone.analyze(img), cls_alone.analyze(img)
    assert both.label != "normal" and both.mask.any()
    assert np.array_equal(both.mask, s.mask)
    assert both.extra["segmentation_model"] == f"{seg_alone.name} {seg_alone.version}" != f"{both.model_name} {both.model_version}"
    assert both.probabilities == c.probabilities and np.array_equal(both.heatmap, c.heatmap)
    assert not np.array_equal(both.mask, c.mask)  # the two networks do differ
    assert paired._view.last_seg is not None and paired._view.last_seg.shape[1] == 0  # decoder skipped


def test_a_segmentation_folder_that_is_an_ensemble_is_refused(tmp_path: Path) -> None:
    wdir = _paired_weights(tmp_path)
    seg = wdir / "segmentation"
    manifest = json.loads((seg / "model.json").read_text())
    manifest["ensemble_members"] = ["model.pt"]
    (seg / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="must hold one network"):
        Analyzer.load(wdir, device="cpu")


def test_heat_map_only_for_an_assessed_result_with_a_lesion(analyzer: Analyzer, image: np.ndarray,
                                                            tmp_path: Path) -> None:
    """Nothing draws the map of a normal or not-assessed result, so none is computed: it stays all
    zeros, and in a mixed batch the lesion result's map is the one it gets alone."""
    from skimage import data as skdata

    alone = analyzer.analyze(image)
    assert alone.label != "normal" and alone.heatmap.max() == pytest.approx(1.0)
    lesion, photo = analyzer.analyze_batch([image, skdata.coins()])
    assert not photo.assessed and photo.heatmap.shape == skdata.coins().shape and not photo.heatmap.any()
    assert np.allclose(lesion.heatmap, alone.heatmap, atol=1e-3)
    wdir = tmp_path / "normal"
    shutil.copytree(DEFAULT_WEIGHTS, wdir)
    manifest = json.loads((wdir / "model.json").read_text())
    manifest["lesion_presence"]["min_area_fraction"] = 1.01  # no mask is large enough: every image normal
    (wdir / "model.json").write_text(json.dumps(manifest))
    normal = Analyzer.load(wdir, device="cpu").analyze(image)
    assert normal.assessed and normal.label == "normal" and not normal.mask.any()
    assert normal.heatmap.shape == image.shape and normal.heatmap.dtype == np.float32 and not normal.heatmap.any()
