"""``models.Analyzer``: one cleaned B-mode image in, an ``AnalysisResult`` out.

Per image: letterbox to the model size, run the network on the image and its horizontal mirror
(test-time augmentation: averaged prediction, and the spread of the malignancy probability as the
uncertainty), Grad-CAM from ``monai.visualize.GradCAM`` on the deepest encoder features, the
largest lesion component mapped back to the input's pixels, and its measurements.

Heat map: MONAI's CAM classes post-process by default with ``default_normalizer``, which maps
(min, max) to (1, 0), i.e. it *inverts* the map (hot where the evidence is weakest, which on these
images is the image edges, not the lesion). Here the raw ReLU'd Grad-CAM is kept, the two mirror
views (same class: the TTA-averaged prediction) are averaged before any scaling, and it is scaled to
[0, 1] once, over the unpadded image area, in the input's own geometry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.visualize import GradCAM
from monai.visualize.class_activation_maps import ModelWithHooks

from sonopacs.models.calibration import Calibration
from sonopacs.models.lesion_shape import SHAPE_FEATURES, shape_feature_matrix
from sonopacs.models.likelihood import likelihood_category
from sonopacs.models.measure import lesion_mask, measure_lesion
from sonopacs.models.networks import ClassifierView, SonoNet, build_network, fuse_conv_bn
from sonopacs.models.presence import PresenceRule, mask_evidence
from sonopacs.models.priors import shift_priors, target_priors
from sonopacs.models.scope import BANK_FILE, FeatureBank, sector_reason, sector_score
from sonopacs.models.second_look import SecondLook
from sonopacs.models.site_calibration import load_site_calibration
from sonopacs.models.transforms import Letterbox, letterbox_image, to_gray, to_model_input
from sonopacs.models.types import CLASSES, AnalysisResult

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights"


def _pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _raw_map(x: torch.Tensor) -> torch.Tensor:
    """GradCAM post-processing that keeps the map as computed (MONAI's default inverts it)."""
    return x


class _PerSampleHooks(ModelWithHooks):
    """MONAI's hook wrapper, scoring each sample's own class (MONAI indexes ``logits[:, idx]``,
    which mixes samples when ``idx`` is a per-sample tensor). The Analyzer passes each view the
    class its image's result reports, so both views' maps explain that label and can be averaged."""

    def class_score(self, logits: torch.Tensor, class_idx: Any) -> torch.Tensor:
        if isinstance(class_idx, torch.Tensor) and class_idx.ndim == 1:
            return logits.gather(1, class_idx[:, None]).squeeze(1)
        return logits[:, class_idx]


def _memory_format(device: torch.device) -> torch.memory_format:
    # CPU: channels-last convolutions measured ~15 % less CPU time per forward here (1 thread,
    # fused net, 2 x 256 x 256: 178 -> 152 ms); same values up to float rounding
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _load_net(wdir: Path) -> tuple[dict[str, Any], SonoNet]:
    """A weights folder's manifest and its network, ready for inference."""
    manifest: dict[str, Any] = json.loads((wdir / "model.json").read_text())
    return manifest, _inference_net(manifest["model"], wdir / "model.pt")


def _inference_net(model_cfg: dict[str, Any], state_path: Path) -> SonoNet:
    """The network ``model_cfg`` describes with the state dict at ``state_path``, ready for inference."""
    net = build_network(model_cfg, pretrained=False)
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    for p in net.parameters():
        p.requires_grad_(False)  # Grad-CAM needs only the gradient at cam_target
    net.cam_detach = True
    fuse_conv_bn(net.eval())  # inference only: BatchNorm folded into the convolutions
    return net


def _mirrored_batch(grays: list[np.ndarray], size: int, device: torch.device, fmt: torch.memory_format
                    ) -> tuple[torch.Tensor, list[Letterbox]]:
    """[letterboxed images..., their mirrors...] as one batch, and each image's letterbox."""
    boxes, tensors = [], []
    for g in grays:
        lb, box = letterbox_image(g, size)
        boxes.append(box)
        tensors.append(to_model_input(lb))
    x = torch.stack(tensors).to(device)
    return torch.cat([x, x.flip(-1)]).contiguous(memory_format=fmt), boxes


def _view_lesion_probability(seg_logits: torch.Tensor) -> np.ndarray:
    """2N x S x S lesion probability in the letterboxed frame, the mirrored views flipped back."""
    seg = torch.softmax(seg_logits.detach().float(), dim=1)[:, 1].cpu().numpy()
    n = len(seg) // 2
    seg[n:] = seg[n:, :, ::-1]
    return seg


def _mirror_mean_lesion_probability(seg: np.ndarray, boxes: list[Letterbox]) -> list[np.ndarray]:
    """Lesion probability per image in its own geometry, averaged over the image and its mirror
    (``seg``: ``_view_lesion_probability``'s 2N views)."""
    n = len(boxes)
    return [box.unletterbox(((seg[i] + seg[n + i]) / 2).astype(np.float32)) for i, box in enumerate(boxes)]


class Segmenter:
    """A second network whose lesion mask replaces the primary network's.

    Lets a weights folder pair the classifier that validated best with the segmenter that
    validated best (each measured out-of-fold on its own run) without retraining either.
    """

    def __init__(self, net: SonoNet, manifest: dict[str, Any], device: torch.device) -> None:
        self.device = device
        self._memory_format = _memory_format(device)
        self.net = net.to(device).eval().to(memory_format=self._memory_format)  # type: ignore[call-overload]
        self.name: str = manifest["name"]
        self.version: str = manifest["version"]
        self.size: int = int(manifest["image_size"])

    @torch.no_grad()
    def lesion_probability(self, grays: list[np.ndarray]) -> list[np.ndarray]:
        xx, boxes = _mirrored_batch(grays, self.size, self.device, self._memory_format)
        _, seg = self.net(xx)
        return _mirror_mean_lesion_probability(_view_lesion_probability(seg), boxes)


class Analyzer:
    """Loaded model + calibration + operating points. Deterministic for the same input.

    With ``segmentation_weights`` in its manifest (a sub-folder), the lesion mask comes from that
    folder's network; probabilities, label and heat map stay with the primary network.

    With ``ensemble_members`` (state-dict files of the same network beside ``model.pt``, e.g. the
    fold models), class logits and lesion probabilities are the mean over the primary network and
    the members: networks trained on different parts of the data err differently at a site none
    has seen, and their mean errs less (the model card measures it). The heat map (so its class
    is the primary network's) and the scope gate's features stay the primary network's.

    With ``second_look`` (``models.second_look``), each found lesion's surroundings are cropped and
    run through the same networks again: the crop's class logits are averaged with the field's and
    the outline is drawn from the crop's lesion probability; presence, heat map and scope features
    stay the first look's.

    Probabilities are the calibration's, prior-shifted from the class mix it was fitted on to
    ``expected_normal_fraction`` normal images (``models.priors``). Lesion presence is decided by
    ``models.presence`` (mask + shifted P(normal)); without a lesion the label is normal, the mask
    empty and the likelihood category "1". Images outside the scope (``models.scope``: pooled
    features far from the reference bank) are not assessed: no mask, no decisions, no category.
    """

    def __init__(self, net: SonoNet, manifest: dict[str, Any], device: torch.device,
                 segmenter: Segmenter | None = None, *, expected_normal_fraction: float = 0.4,
                 scope_bank: FeatureBank | None = None, site_calibration: Path | None = None,
                 members: list[SonoNet] | None = None) -> None:
        self.device = device
        self._memory_format = _memory_format(device)
        self.net = net.to(device).eval().to(memory_format=self._memory_format)  # type: ignore[call-overload]
        self.segmenter = segmenter
        self.manifest = manifest
        self.name: str = manifest["name"]
        self.version: str = manifest["version"]
        self.size: int = int(manifest["image_size"])
        self.calibration = (Calibration.from_dict(manifest["calibration"]) if "calibration" in manifest else
                            Calibration(float(manifest["temperature"]),
                                        tuple(float(b) for b in manifest.get("class_bias", (0.0, 0.0, 0.0)))))
        if self.calibration.uses_features and tuple(self.calibration.feature_names) != SHAPE_FEATURES:
            raise ValueError(f"calibration features {self.calibration.feature_names} are not this "
                             f"version's {SHAPE_FEATURES}")
        # its own decoder unless a segmenter replaces it and the calibration needs no mask shape
        self.net.segment = segmenter is None or self.calibration.uses_features
        self.members = [m.to(device).eval().to(memory_format=self._memory_format)  # type: ignore[call-overload]
                        for m in (members or [])]
        for m in self.members:
            m.segment = self.net.segment
        self.operating_points: dict[str, float] = {k: float(v) for k, v in manifest["operating_points"].items()}
        # the class mix the calibration was fitted on (its biases encode it)
        self.class_priors: tuple[float, ...] = tuple(float(x) for x in manifest.get(
            "calibration_class_priors", (1 / 3, 1 / 3, 1 / 3)))
        self.calibration_source = "shipped"
        self.presence = PresenceRule.from_dict(manifest.get("lesion_presence"))
        self.second_look = SecondLook.from_dict(manifest.get("second_look"))
        if self.second_look is not None and self.calibration.uses_features:
            raise ValueError("a second look cannot be combined with a shape-feature calibration")
        if site_calibration is not None:
            site = load_site_calibration(Path(site_calibration), self.name, self.version)
            if self.calibration.uses_features:
                raise ValueError("a site calibration cannot replace a shape-feature calibration")
            self.calibration, self.class_priors = site.calibration, site.class_priors
            self.operating_points = dict(site.operating_points)
            self.calibration_source = f"site: {site_calibration} ({site.n_images} images, {site.created})"
            expected_normal_fraction = site.expected_normal_fraction  # the site's own mix when it had normals
            self.presence = site.presence_rule(self.presence)
            if scope_bank is not None and site.scope_features is not None:  # the site's breast images join it
                scope_bank = scope_bank.with_site(site.scope_features)
        self.expected_normal_fraction = float(expected_normal_fraction)
        self.target_priors = target_priors(self.class_priors, self.expected_normal_fraction)
        self.scope_bank = scope_bank
        self._pooled: torch.Tensor | None = None
        self.net.pool.register_forward_hook(self._keep_pooled)
        # eval() here too: MONAI's ModelWithHooks restores train mode after each call when the
        # wrapped module reports training=True, which left the whole net in train mode (batch-stat
        # BatchNorm and running-stat updates for anyone calling ``net`` directly afterwards)
        self._view = ClassifierView(self.net).eval()
        hooked = _PerSampleHooks(self._view, "net.cam_target", register_forward=True, register_backward=True)
        self._cam = GradCAM(nn_module=hooked, target_layers="net.cam_target",  # type: ignore[arg-type]
                            postprocessing=_raw_map)

    def _keep_pooled(self, _module: Any, _inputs: Any, output: torch.Tensor) -> None:
        self._pooled = output.detach()

    @classmethod
    def load(cls, weights_dir: Path | None = None, device: str = "auto", *, expected_normal_fraction: float = 0.4,
             site_calibration: Path | None = None, scope_gate: bool = True) -> Analyzer:
        wdir = Path(weights_dir) if weights_dir is not None else DEFAULT_WEIGHTS
        manifest, net = _load_net(wdir)
        dev = _pick_device(device)
        segmenter = None
        if manifest.get("segmentation_weights"):
            seg_manifest, seg_net = _load_net(wdir / str(manifest["segmentation_weights"]))
            if seg_manifest.get("ensemble_members"):  # the Segmenter runs one network: refuse, not ignore
                raise ValueError(f"{wdir / str(manifest['segmentation_weights'])}: a segmentation folder "
                                 f"must hold one network, not an ensemble")
            segmenter = Segmenter(seg_net, seg_manifest, dev)
        members = [_inference_net(manifest["model"], wdir / str(f)) for f in manifest.get("ensemble_members", [])]
        bank = FeatureBank.load(wdir / BANK_FILE) if scope_gate and (wdir / BANK_FILE).exists() else None
        return cls(net, manifest, dev, segmenter, expected_normal_fraction=expected_normal_fraction,
                   scope_bank=bank, site_calibration=site_calibration, members=members)

    @classmethod
    def from_settings(cls, model_settings: Any) -> Analyzer:
        """The Analyzer a ``config.ModelSettings`` describes (weights, device, priors, site calibration)."""
        return cls.load(model_settings.weights_dir, model_settings.device,
                        expected_normal_fraction=model_settings.expected_normal_fraction,
                        site_calibration=model_settings.site_calibration, scope_gate=model_settings.scope_gate)

    def reported_probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated, prior-shifted probabilities of raw (mirror-mean) logits, as ``analyze`` reports them."""
        if self.calibration.uses_features:
            raise ValueError("this calibration needs lesion-shape features")
        return shift_priors(self.calibration.probs(np.atleast_2d(logits)), self.class_priors, self.target_priors)

    def analyze(self, image: np.ndarray, spacing_mm: tuple[float, float] | None = None) -> AnalysisResult:
        return self.analyze_batch([image], [spacing_mm])[0]

    def analyze_batch(self, images: list[np.ndarray],
                      spacings: list[tuple[float, float] | None] | None = None) -> list[AnalysisResult]:
        """Analyse several images in one network pass (each with its mirror for TTA)."""
        if not images:
            return []
        spacings = list(spacings) if spacings is not None else [None] * len(images)
        if len(spacings) != len(images):
            raise ValueError("spacings must have one entry per image")
        grays = [to_gray(img) for img in images]
        xx, boxes = _mirrored_batch(grays, self.size, self.device, self._memory_format)
        n = len(images)
        with torch.no_grad():
            self._view(xx)  # the primary network's logits and lesion maps; the heat map comes last
        assert self._view.last_logits is not None and self._view.last_seg is not None
        logits_t, views = self._members_mean(xx, self._view.last_logits.detach().float(), self._view.last_seg)
        logits = logits_t.cpu().numpy().astype(np.float64)
        if self.segmenter is not None:
            full_probs = self.segmenter.lesion_probability(grays)
        else:
            assert views is not None  # the networks' own decoders ran
            full_probs = _mirror_mean_lesion_probability(views, boxes)
        features = self._mirror_mean_pooled(n)  # before a second look runs the network again
        found = [lesion_mask(p, self.presence.mask_threshold) for p in full_probs]  # the detection masks
        outline_probs: list[np.ndarray | None] = [None] * n
        looked: list[tuple[slice, slice] | None] = [None] * n
        if self.second_look is not None:
            logits, outline_probs, looked = self._look_again(grays, logits, full_probs, found)
        ood = self.scope_bank.distance(features) if self.scope_bank is not None else np.full(n, np.nan)
        shape_views = shape_mean = None
        if self.calibration.uses_features and views is not None:  # the networks' own mask, as at calibration
            shape_views = shape_feature_matrix(views)
            shape_mean = shape_feature_matrix((views[:n] + views[n:]) / 2)
        results: list[AnalysisResult] = []
        for i in range(n):
            probs_views = self._shift(self.calibration.probs(
                logits[[i, n + i]], None if shape_views is None else shape_views[[i, n + i]]))
            mean_logits = logits[[i, n + i]].mean(axis=0, keepdims=True)
            probs = self._shift(self.calibration.probs(mean_logits,
                                                       None if shape_mean is None else shape_mean[[i]]))[0]
            shape = None if shape_mean is None else dict(zip(SHAPE_FEATURES, map(float, shape_mean[i]), strict=True))
            res = self._result(probs, probs_views, full_probs[i], found[i], boxes[i], spacings[i], shape,
                               outline_probs[i])
            res.extra["logits"] = [float(x) for x in mean_logits[0]]
            box = looked[i]  # the crop looked at again: [first row, end row, first column, end column]
            res.extra["second_look"] = None if box is None else [box[0].start, box[0].stop, box[1].start, box[1].stop]
            res.scope_features = features[i]
            self._gate(res, float(ood[i]), sector_score(grays[i]))
            results.append(res)
        self._explain(xx, boxes, results)
        return results

    def _explain(self, xx: torch.Tensor, boxes: list[Letterbox], results: list[AnalysisResult]) -> None:
        """The heat map of each assessed result with a lesion: Grad-CAM of the primary network on
        the class the result reports, both views averaged. After the decision, not before: the label
        comes from the calibrated ensemble, the presence rule and the second look, and a map of
        another class would explain a finding not shown. A normal or not-assessed result keeps the
        empty map: nothing draws it (a warm patch on a normal image reads as a finding pointed at),
        and skipping it saves a pass of the primary network (about 15 % of a normal image's time)."""
        explained = [i for i, res in enumerate(results) if res.assessed and res.label != "normal"]
        if not explained:
            return
        n = len(results)
        views = explained + [n + i for i in explained]
        with torch.enable_grad():
            classes = [CLASSES.index(results[i].label) for i in explained] * 2  # the reported labels
            cam = self._cam(xx[views], class_idx=torch.tensor(classes, device=xx.device))  # raw ReLU'd map
        cam_np = cam.detach().float().cpu().numpy()[:, 0]
        k = len(explained)
        for j, i in enumerate(explained):
            results[i].heatmap = _heat_map((cam_np[j] + cam_np[k + j][:, ::-1]) / 2, boxes[i])

    def _mirror_mean_pooled(self, n: int) -> np.ndarray:
        """The primary network's pooled deepest features of the last pass over ``n`` images and
        their mirrors, mirror-averaged: what the scope gate's feature bank measures."""
        assert self._pooled is not None
        pooled = self._pooled.float().cpu().numpy().reshape(2 * n, -1).astype(np.float64)
        return (pooled[:n] + pooled[n:]) / 2

    @torch.no_grad()
    def look(self, grays: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Class logits of these images' 2N views ([images..., mirrors...], mean over the networks)
        and each image's mirror-mean lesion probability in its own geometry; no heat map, no result."""
        xx, boxes = _mirrored_batch(grays, self.size, self.device, self._memory_format)
        logits, seg = self.net(xx)
        mean_logits, views = self._members_mean(xx, logits.float(), seg)
        probs = (self.segmenter.lesion_probability(grays) if self.segmenter is not None else
                 _mirror_mean_lesion_probability(views, boxes))  # type: ignore[arg-type]
        return mean_logits.cpu().numpy().astype(np.float64), probs

    def _look_again(self, grays: list[np.ndarray], logits: np.ndarray, full_probs: list[np.ndarray],
                    found: list[np.ndarray]
                    ) -> tuple[np.ndarray, list[np.ndarray | None], list[tuple[slice, slice] | None]]:
        """``models.second_look``: each image with a detection mask (``found``) is cropped around it
        and ``look``ed at. Returns the 2N view logits averaged with the crop's, the lesion probability
        with the crop's in place of the first look's inside the crop (for the outline only; presence
        stays the first look's; None where not looked at again), and each image's crop (or None)."""
        assert self.second_look is not None
        n = len(grays)
        crops = {i: box for i, f in enumerate(found) if (box := self.second_look.crop(f)) is not None}
        outline: list[np.ndarray | None] = [None] * n
        if not crops:
            return logits, outline, [None] * n
        order = list(crops)
        second, crop_probs = self.look([grays[i][crops[i]] for i in order])
        logits = logits.copy()
        m = len(order)
        for k, i in enumerate(order):
            logits[i] = (logits[i] + second[k]) / 2  # each view with the crop's same view
            logits[n + i] = (logits[n + i] + second[m + k]) / 2
            prob = full_probs[i].copy()
            prob[crops[i]] = crop_probs[k]
            outline[i] = prob
        return logits, outline, [crops.get(i) for i in range(n)]

    @torch.no_grad()
    def scope_features(self, images: list[np.ndarray]) -> np.ndarray:
        """The scope gate's features of these images (N x C) from the primary network alone, without
        the ensemble members, the heat map or a result: what ``scope_bank`` collects, at a quarter
        of ``analyze_batch``'s work for a four-network model."""
        xx, _ = _mirrored_batch([to_gray(img) for img in images], self.size, self.device, self._memory_format)
        self.net(xx)
        return self._mirror_mean_pooled(len(images))

    @torch.no_grad()
    def _members_mean(self, xx: torch.Tensor, logits: torch.Tensor, seg: torch.Tensor
                      ) -> tuple[torch.Tensor, np.ndarray | None]:
        """Class logits and per-view lesion probability (None when a segmenter replaces the
        networks' decoders), each the mean over the primary network (its outputs given) and the
        ensemble members."""
        all_logits, all_views = [logits], [_view_lesion_probability(seg)] if self.net.segment else []
        for m in self.members:
            m_logits, m_seg = m(xx)
            all_logits.append(m_logits.float())
            if self.net.segment:
                all_views.append(_view_lesion_probability(m_seg))
        return torch.stack(all_logits).mean(0), np.mean(all_views, axis=0) if all_views else None

    def _shift(self, probs: np.ndarray) -> np.ndarray:
        return shift_priors(probs, self.class_priors, self.target_priors)

    def _gate(self, res: AnalysisResult, distance: float, sector: float) -> None:
        """Mark ``res`` not assessed (in place) when its field is a sector or its features are out
        of distribution; only with a scope bank loaded (``model.scope_gate``)."""
        res.extra["ood_score"] = None if distance != distance else round(distance, 3)
        res.extra["sector_score"] = round(sector, 3)
        if self.scope_bank is None:
            return
        reason = sector_reason(sector) or self.scope_bank.reason(distance)
        if reason is not None:
            mark_not_assessed(res, reason)

    def _outline(self, full_prob: np.ndarray, found: np.ndarray, outline_prob: np.ndarray | None) -> np.ndarray:
        """The outline of a present lesion: drawn on the second look's probability where it ran and
        still finds a lesion there, else on the first look's."""
        if outline_prob is not None:
            again = lesion_mask(outline_prob, self.presence.mask_threshold)
            if again.any():
                return self.presence.contour(outline_prob, again)
        return self.presence.contour(full_prob, found)

    def _result(self, probs: np.ndarray, probs_views: np.ndarray, full_prob: np.ndarray, found: np.ndarray,
                box: Any, spacing: tuple[float, float] | None, shape: dict[str, float] | None = None,
                outline_prob: np.ndarray | None = None) -> AnalysisResult:
        """The result without its heat map (``_explain`` adds it once every label is known)."""
        pm = float(probs[2])
        area_fraction, confidence = mask_evidence(full_prob, found, box.fill)
        present = self.presence.lesion_present(float(probs[0]), area_fraction, confidence)
        # normal when no lesion is found, else the likelier of benign and malignant
        label = CLASSES[1 + int(np.argmax(probs[1:]))] if present else "normal"
        mask = self._outline(full_prob, found, outline_prob) if present else np.zeros(full_prob.shape, bool)
        lesion = measure_lesion(mask, spacing)
        return AnalysisResult(
            probabilities={c: float(p) for c, p in zip(CLASSES, probs, strict=True)},
            label=label,
            malignancy_probability=pm,
            decisions={k: bool(present and pm >= t) for k, t in self.operating_points.items()},
            mask=mask,
            heatmap=np.zeros(full_prob.shape, np.float32),
            lesion=lesion,
            uncertainty=float(np.std(probs_views[:, 2])),
            model_name=self.name,
            model_version=self.version,
            extra={
                "operating_points": dict(self.operating_points),
                "tta_views": 2,
                "heatmap_method": ("monai GradCAM on the deepest encoder features, class = the reported label "
                                   "(an assessed result with a lesion only: all zeros where normal or not assessed), "
                                   "raw map (not MONAI's inverting default_normalizer), min-max over the "
                                   "unpadded image"),
                "lesion_probability_max": float(full_prob.max()),
                "lesion_area_fraction": round(area_fraction, 5),
                "lesion_mask_confidence": round(confidence, 4),
                "lesion_present": present,
                "expected_normal_fraction": self.expected_normal_fraction,
                "calibration": self.calibration_source,
                "segmentation_model": (f"{self.segmenter.name} {self.segmenter.version}" if self.segmenter
                                       else f"{self.name} {self.version}"),
                "networks": 1 + len(self.members),
                **({"lesion_shape": shape} if shape is not None else {}),  # what the calibration used
            },
            likelihood_category=likelihood_category(pm, present),
        )


def _heat_map(heat: np.ndarray, box: Letterbox) -> np.ndarray:
    """A view-averaged Grad-CAM map in the image's geometry (the unpadded area only), scaled once to 0-1."""
    full = box.unletterbox(heat.astype(np.float32))
    lo, hi = float(full.min()), float(full.max())
    return np.clip((full - lo) / (hi - lo) if hi > lo else np.zeros_like(full), 0, 1).astype(np.float32)


def mark_not_assessed(res: AnalysisResult, reason: str) -> AnalysisResult:
    """Turn ``res`` into a not-assessed result (in place): no mask, lesion, decisions or category.

    Probabilities stay (for audit and evaluation), but nothing is shown as a finding.
    """
    res.assessed = False
    res.not_assessed_reason = reason
    res.mask = np.zeros(res.mask.shape, bool)
    res.lesion = None
    res.decisions = {k: False for k in res.decisions}
    res.likelihood_category = None
    return res

