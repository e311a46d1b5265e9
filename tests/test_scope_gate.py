"""Scope gate: header evidence, colour content, sector-shaped fields and the feature-bank OOD score
make an image "not assessed" with a reason; breast images stay assessed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from sonopacs.dicom_node.eligibility import region_scope_reason, scope_reason
from sonopacs.dicom_node.regions import UltrasoundRegion
from sonopacs.models.scope import FeatureBank, colour_reason, sector_reason, sector_score

DATA = Path(__file__).parent / "data" / "bus-bra"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"


def _header(**kw: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = US_IMAGE
    ds.Modality = "US"
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def _region(spatial_format: int, data_type: int) -> UltrasoundRegion:
    return UltrasoundRegion(0, 0, 99, 99, spatial_format, data_type, None)


def test_header_evidence() -> None:
    assert scope_reason(_header()) is None  # no evidence either way: assessed
    assert scope_reason(_header(BodyPartExamined="BREAST")) is None
    assert "HEART" in (scope_reason(_header(BodyPartExamined="HEART")) or "")
    assert "MR" in (scope_reason(_header(Modality="MR")) or "")
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "80891009", "SCT", "Heart"
    assert "Heart" in (scope_reason(_header(AnatomicRegionSequence=[item])) or "")
    item.CodeValue, item.CodeMeaning = "76752008", "Breast"
    assert scope_reason(_header(AnatomicRegionSequence=[item])) is None


def test_region_types() -> None:
    assert region_scope_reason([_region(1, 1)]) is None
    assert region_scope_reason([_region(1, 1), _region(0, 13)]) is None  # grey bar
    assert "spectral" in (region_scope_reason([_region(1, 1), _region(3, 3)]) or "")
    assert "M-mode" in (region_scope_reason([_region(2, 1)]) or "")
    assert "colour flow" in (region_scope_reason([_region(1, 2)]) or "")
    # a real obstetric file: 2D region + a waveform trace region
    ds = pydicom.dcmread(str(get_testdata_file("OBXXXX1A.dcm")), stop_before_pixels=True)
    assert "waveform" in (scope_reason(ds) or "")


def test_colour_and_sector_evidence() -> None:
    assert colour_reason({"doppler_fraction": 0.0, "flags": []}) is None
    assert "colour" in (colour_reason({"doppler_fraction": 0.08, "flags": ["doppler"]}) or "")
    rng = np.random.default_rng(0)
    rect = rng.integers(40, 200, (200, 300), dtype=np.uint8)
    sector = rect.copy()
    yy, xx = np.mgrid[0:200, 0:300]
    sector[np.abs(xx - 150) > yy * 0.8 + 5] = 0  # apex at the top centre
    assert sector_score(rect) == 0.0 and sector_reason(sector_score(rect)) is None
    assert sector_score(sector) > 0.9 and sector_reason(sector_score(sector)) is not None


def test_feature_bank_threshold_keeps_the_held_out_quantile(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ref, held = rng.normal(size=(400, 8)), rng.normal(size=(200, 8))
    bank = FeatureBank.fit(ref, held, keep_quantile=0.95)
    assert abs((bank.distance(held) <= bank.threshold).mean() - 0.95) < 0.01
    assert bank.reason(float(bank.distance(np.full((1, 8), 10.0))[0])) is not None
    bank.save(tmp_path / "b.npz")
    again = FeatureBank.load(tmp_path / "b.npz")
    assert abs(again.threshold - bank.threshold) < 1e-9
    assert np.allclose(again.distance(held), bank.distance(held), atol=1e-3)


@pytest.fixture(scope="module")
def analyzer():  # type: ignore[no-untyped-def]
    from sonopacs.models.analyzer import Analyzer

    return Analyzer.load(device="cpu")


def test_analyzer_gates_photos_and_keeps_breast(analyzer) -> None:  # type: ignore[no-untyped-def]
    from skimage import data as skdata

    from sonopacs.models.data import load_image
    from sonopacs.models.transforms import to_gray

    breast = [to_gray(load_image(p)) for p in sorted(DATA.glob("bus_*.jpg"))]
    photos = [skdata.camera(), to_gray(skdata.astronaut()), skdata.coins()]
    results = analyzer.analyze_batch(breast + photos)
    assert all(r.assessed for r in results[: len(breast)])
    for r in results[len(breast):]:
        assert not r.assessed and r.not_assessed_reason
        assert not r.mask.any() and r.lesion is None and r.likelihood_category is None
        assert not any(r.decisions.values())


def test_scope_features_are_the_features_analyze_measures(analyzer) -> None:  # type: ignore[no-untyped-def]
    """``scope_features`` (the primary network alone, what ``scope_bank`` collects) gives the
    distance ``analyze_batch`` reports, and the features each result keeps, for images of different
    sizes in one batch."""
    from skimage import data as skdata

    from sonopacs.models.data import load_image
    from sonopacs.models.transforms import to_gray

    images = [to_gray(load_image(p)) for p in sorted(DATA.glob("bus_*.jpg"))] + [skdata.coins()]
    assert len({im.shape for im in images}) > 1
    features = analyzer.scope_features(images)
    results = analyzer.analyze_batch(images)
    assert analyzer.scope_bank.distance(features) == pytest.approx([r.extra["ood_score"] for r in results], abs=2e-3)
    # each result keeps them (``calibrate`` pools them into the bank without another network pass)
    kept = np.stack([r.scope_features for r in results])
    assert kept.shape == features.shape and np.allclose(kept, features, rtol=1e-4, atol=1e-4)


def test_finding_from_a_cardiac_header_is_not_assessed(analyzer) -> None:  # type: ignore[no-untyped-def]
    from sonopacs.models.data import load_image
    from sonopacs.models.transforms import to_gray
    from sonopacs.worker.findings import analysis_record, finding_from_record

    img = to_gray(load_image(DATA / "bus_0001-l.jpg"))
    res = analyzer.analyze(img)
    assert res.assessed and res.mask.any()  # a lesion the model finds...
    record = analysis_record(res, analyzer.operating_points)
    finding = finding_from_record(_header(BodyPartExamined="HEART"), 0, img, record, (0, 0), res.mask, res.heatmap)
    assert not finding.assessed and "HEART" in (finding.not_assessed_reason or "")
    assert finding.mask is None and finding.contour == [] and finding.likelihood_category is None
    ok = finding_from_record(_header(BodyPartExamined="BREAST"), 0, img, record, (0, 0), res.mask, res.heatmap)
    assert ok.assessed and ok.contour and ok.likelihood_category == res.likelihood_category


def test_analyze_cli_json_for_non_breast_ultrasound(tmp_path: Path) -> None:
    from sonopacs.cli import main

    src = str(get_testdata_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))  # adult echocardiogram, no header hint
    assert main(["analyze", src, str(DATA / "bus_0056-r.jpg"), "--out", str(tmp_path)]) == 0
    rec = json.loads((tmp_path / "JPGLosslessP14SV1_1s_1f_8b.json").read_text())
    assert rec["assessed"] is False and rec["not_assessed_reason"]
    assert rec["likelihood_category"] is None and rec["lesion"] is None
    from PIL import Image

    assert not np.asarray(Image.open(tmp_path / "JPGLosslessP14SV1_1s_1f_8b_mask.png")).any()
    breast = json.loads((tmp_path / "bus_0056-r.json").read_text())
    assert breast["assessed"] is True and breast["likelihood_category"] in ("1", "3", "4A", "4B", "4C", "5")


def test_pipeline_cleaning_path_has_no_fallback_and_carries_field_reasons(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sonopacs.models.clean as clean_mod
    from sonopacs.models.clean import CleaningFailed
    from sonopacs.worker.findings import analysis_record, clean_frame, pick_most_suspicious
    from sonopacs.worker.records import FieldRecord, jsonable

    rng = np.random.default_rng(2)
    frame = rng.integers(30, 200, (240, 320), dtype=np.uint8)
    # a Doppler region in the header: every field of the frame is out of scope, with that reason
    fields = clean_frame(frame, [_region(1, 1), _region(3, 3)])
    assert fields and all("spectral" in str(r.summary["not_assessed_reason"]) for r, _ in fields)
    assert all("not_assessed_reason" not in r.summary for r, _ in clean_frame(frame, [_region(1, 1)]))

    class _Res:  # the few AnalysisResult fields analysis_record reads, assessed
        def __init__(self, pm: float) -> None:
            from sonopacs.models.types import AnalysisResult

            self.r = AnalysisResult({"normal": 0.1, "benign": 0.9 - pm, "malignant": pm}, "benign", pm,
                                    {"default": pm > 0.5}, np.zeros((4, 4), bool), np.zeros((4, 4), np.float32),
                                    None, 0.0, "m", "1", likelihood_category="4B")

    items = []
    for k, (pm, summary) in enumerate([(0.9, {"not_assessed_reason": "colour Doppler"}), (0.2, {})]):
        it = FieldRecord(order=k, frame_index=0, field_index=k, offset=(0, 0), spacing_mm=None,
                         summary=jsonable(summary))
        it.analysis = analysis_record(_Res(pm).r, {})
        items.append(it)
    best = pick_most_suspicious(items)
    assert best.order == 1  # the assessed field wins over a more suspicious out-of-scope one
    assert not items[0].analysed().assessed and items[0].analysed().likelihood_category is None
    assert not any(items[0].analysed().decisions.values())

    def refuse(image, regions=None):  # type: ignore[no-untyped-def]
        raise ValueError("not an ultrasound frame")

    monkeypatch.setattr(clean_mod, "clean_image", refuse)
    with pytest.raises(CleaningFailed, match="not an ultrasound frame"):
        clean_frame(frame, [])
    monkeypatch.setattr(clean_mod, "clean_image", lambda image, regions=None: [])
    with pytest.raises(CleaningFailed, match="no ultrasound field"):
        clean_frame(frame, [])


def test_a_sites_images_pool_into_the_bank_as_if_fitted_together() -> None:
    """``with_site``: the pooled mean and covariance are those of the reference and the site's
    images together; the threshold stays."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, (400, 5)), rng.normal(0.5, 2, (60, 5))
    bank = FeatureBank(a.mean(0), np.linalg.inv(np.cov(a, rowvar=False, bias=True)), 7.5, len(a), 0.99)
    pooled = bank.with_site(b)
    both = np.vstack([a, b])
    assert np.allclose(pooled.mean, both.mean(0))
    assert np.allclose(np.linalg.inv(pooled.precision), np.cov(both, rowvar=False, bias=True))
    assert (pooled.threshold, pooled.n_reference) == (7.5, 460)
    assert bank.with_site(np.zeros((0, 5))) is bank


def test_calibrate_keeps_the_sites_breast_images_in_scope_and_photos_out(tmp_path: Path) -> None:
    """A bank under which every one of a site's breast images is out of distribution (the shipped
    one with distances 2.4 times as long, built from as few images as the site has): ``sonopacs calibrate``
    keeps the site's features in the file, the Analyzer with that file pools them into the bank, the
    site's images are assessed and a photograph is still not."""
    import shutil

    import cv2
    from skimage import data as skdata

    from sonopacs.models.analyzer import DEFAULT_WEIGHTS, Analyzer
    from sonopacs.models.calibrate_site import calibrate_index
    from sonopacs.models.scope import BANK_FILE, OUT_OF_DISTRIBUTION
    from sonopacs.models.site_calibration import load_site_calibration

    wdir = tmp_path / "weights"
    shutil.copytree(DEFAULT_WEIGHTS, wdir)
    shipped = FeatureBank.load(wdir / BANK_FILE)
    FeatureBank(shipped.mean, shipped.precision * 6, shipped.threshold, 6, shipped.keep_quantile).save(wdir / BANK_FILE)
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    for f in sorted(DATA.glob("bus_*.jpg")):
        shutil.copy(f, site_dir / f.name)
    lines = (DATA / "index.csv").read_text().splitlines()  # image,label,... of the six samples, both classes
    (site_dir / "index.csv").write_text("\n".join(",".join(r.split(",")[:2] + [""]) for r in lines) + "\n")
    images = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in sorted(site_dir.glob("bus_*.jpg"))]
    before = Analyzer.load(wdir, device="cpu")
    assert all(not r.assessed and (r.not_assessed_reason or "").startswith(OUT_OF_DISTRIBUTION)
               for r in before.analyze_batch(images))

    site = calibrate_index(site_dir / "index.csv", tmp_path / "site.json", before, n_boot=10)
    assert site.scope_features is not None and site.scope_features.shape == (6, 320)
    assert any("6 of the 6 images were outside the shipped scope bank" in w and "0 still are" in w for w in site.warnings)
    saved = load_site_calibration(tmp_path / "site.json", site.model_name, site.model_version)
    assert saved.scope_features is not None
    assert np.allclose(saved.scope_features, site.scope_features, atol=1e-5)

    after = Analyzer.load(wdir, device="cpu", site_calibration=tmp_path / "site.json")
    assert all(r.assessed for r in after.analyze_batch(images))
    photo = after.analyze(skdata.camera())
    assert not photo.assessed and (photo.not_assessed_reason or "").startswith(OUT_OF_DISTRIBUTION)
