"""Detect burned-in annotations inside a field: text, calipers, lines, arrows, markers, coloured overlay;
flag colour Doppler instead of erasing it.

Why this design: overlays are drawn in one flat colour, in strokes a few pixels wide with sharp
edges, brighter than or coloured unlike their surroundings. Candidate components (white top-hat or
colour) are scored by a small boosted-tree classifier trained on synthetic burn-ins
(cleaning/train_detector.py). Accepted strokes are then completed pixel by pixel with what overlays
are: flat (grow along the stroke's own grey level, and take pieces nearby at exactly that level),
coloured (grow into faintly coloured pixels, which grey tissue never is), and antialiased (the ring
of pixels around the strokes, decided pixel by pixel by a second small classifier, cleaning/fringe.py).
Lowering thresholds instead always cost more precision than it gained recall (docs/measurements.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from sonopacs.cleaning import trees
from sonopacs.cleaning.features import COLOUR_CHROMA, FEATURE, Candidates, find_candidates
from sonopacs.cleaning.fringe import box_sums, fringe
from sonopacs.cleaning.trees import TreeEnsemble

_SQUARE3 = np.ones((3, 3), np.uint8)
_ELLIPSE7 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))


@dataclass
class Detection:
    mask: np.ndarray  # bool, pixels to remove
    kinds: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)
    doppler_fraction: float = 0.0
    components: int = 0
    flat_fill: np.ndarray | None = None  # part of mask better filled flat than inpainted (scale bars)


@dataclass(frozen=True)
class DetectorParams:
    """Every tuning value of the annotation detector, named once. Why each has its value (the
    measurements on synthetic burn-ins and BUS-BRA folds) is in docs/measurements.md (Cleaning, tuning values)."""

    accept: float = 0.3  # classifier probability above which a candidate component is an overlay
    line_doubt: float = 0.15  # below this a component is not rescued by text-line neighbours
    max_scored: int = 20_000  # candidate components scored per field (a real frame has a few thousand)
    strong_grow_tophat: int = 30  # top-hat of a stroke pixel that level growth and matching may take
    fringe_classifier: bool = True  # learned fringe (cleaning/fringe.py); False: the halo margin rule
    fringe_rounds: int = 1  # rings of the learned fringe around accepted strokes
    halo_rounds: int = 1  # halo rule: pixel rings tested against the local tissue level
    halo_margin: int = 10  # halo rule: grey levels above the tissue mean around a pixel
    halo_exclude_ring: bool = True  # halo rule: leave the ring itself out of that mean
    halo_window: int = 7  # halo rule: box (px) of that mean
    chroma_grow_rounds: int = 2  # rings of faintly coloured pixels added around accepted strokes
    chroma_grow: int = 10  # chroma of such a pixel (grey tissue has none; a colour stroke's blend has)
    level_grow_rounds: int = 12  # rings of pixels at the stroke's own grey level added around it
    level_tol: int = 2  # grey levels within which a pixel is "at the stroke's level" (overlays are flat)
    touch_doubt: float = 0.1  # doubtful components (p >= this) touching an accepted stroke are taken
    touch_gap: int = 2  # px: what "touching" means
    ruler_min_ticks: int = 4  # accepted short ticks at one column, evenly spaced, that make a depth ruler
    ruler_tophat: int = 20  # pixels at a ruler's predicted tick positions kept at this top-hat
    match: bool = True  # level matching: pieces at an accepted stroke's exact level nearby
    match_radius: int = 20  # px around accepted strokes searched by level matching
    match_tophat: int = 20  # top-hat of such a piece
    match_min_area: int = 4  # connected pixels of such a piece
    doppler_min_core: int = 30  # px: 0.1 x the smallest colour-map area
    streaks: bool = True  # tissue-streak rule: long thin horizontal grey components that are not flat
    streak_min_width: int = 20  # px
    streak_aspect: float = 3.0  # width / height
    streak_max_height: int = 8  # px
    streak_plateau: float = 0.4  # share of pixels within 12 levels of the component's max (lines are flat)

PARAMS = DetectorParams()


@lru_cache(maxsize=1)
def _model() -> TreeEnsemble:
    return TreeEnsemble.from_json(trees.MODEL_PATH)


def doppler_areas(chroma: np.ndarray, rgb_max: np.ndarray, *, p: DetectorParams = PARAMS) -> np.ndarray:
    """Coloured areas that are maps, not graphics: Doppler or elastography.

    Why erosion: overlay graphics, even big coloured text or a coloured box, are strokes a few
    pixels wide and vanish under a 7x7 erosion; a colour-flow map is made of blobs that survive it.
    Brightness spread (a colour scale from dark red to yellow) backs the call for sparse maps.
    """
    coloured = (chroma >= COLOUR_CHROMA).astype(np.uint8)
    core_img = cv2.erode(coloured, _ELLIPSE7)
    if cv2.countNonZero(core_img) < p.doppler_min_core:
        # no blob could pass the tests below (a map needs >= 10 % of >= 300 px in its core):
        # coloured text and lines vanish under the erosion, so skip the labelling (2-3 ms)
        return np.zeros(chroma.shape, bool)
    closed = cv2.morphologyEx(coloured, cv2.MORPH_CLOSE, _SQUARE3)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    if n <= 1:
        return np.zeros(chroma.shape, bool)
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    core = core_img.ravel() > 0
    lab_all = labels.ravel()
    core_frac = np.bincount(lab_all[core], minlength=n) / np.maximum(area, 1)
    idx = np.flatnonzero(coloured)
    lab = lab_all[idx]
    v = rgb_max.ravel()[idx].astype(np.float64)
    cnt = np.maximum(np.bincount(lab, minlength=n), 1)
    mean_v = np.bincount(lab, weights=v, minlength=n) / cnt
    std_v = np.sqrt(np.maximum(np.bincount(lab, weights=v * v, minlength=n) / cnt - mean_v ** 2, 0))
    big = area >= max(300, 0.002 * chroma.size)
    doppler = big & ((core_frac >= 0.3) | ((core_frac >= 0.1) & (std_v >= 22)))
    doppler[0] = False
    return doppler[labels] & (coloured > 0)


def tissue_streaks(cand: Candidates, *, p: DetectorParams = PARAMS) -> np.ndarray:
    """Candidates that are skin lines or fascia, whatever the classifier says: long, thin, horizontal,
    grey, and not flat.

    Why a rule: the classifier never learnt them (its training leaves out components an earlier
    model called overlay in the clean BUS-BRA images, and those included these streaks); an audit of
    the pixels removed from un-annotated images found them to be most of the tissue removed. An
    overlay line is drawn at one level, so most of its pixels sit near its maximum (plateau); a
    tissue streak's level wanders.
    """
    w, h = cand.boxes[:, 2], cand.boxes[:, 3]
    f = cand.features
    return ((w >= p.streak_min_width) & (w >= p.streak_aspect * h) & (h <= p.streak_max_height)
            & (f[:, FEATURE["plateau"]] < p.streak_plateau)
            & (f[:, FEATURE["mean_chroma"]] < COLOUR_CHROMA / 2))


def complete_text_lines(cand: Candidates, prob: np.ndarray, rounds: int = 3, *, p: DetectorParams = PARAMS) -> np.ndarray:
    """Accept doubtful components that sit in a text line with accepted ones.

    Why: a blurred or thin glyph alone looks like speckle, but letters come in rows of similar
    height and brightness; a neighbour on the same line, one glyph-height away, settles it.
    """
    accept = prob >= p.accept
    doubtful = np.flatnonzero((prob >= p.line_doubt) & ~accept)
    if doubtful.size == 0 or not accept.any():
        return accept
    x, y, w, h = (cand.boxes[:, i].astype(np.float64) for i in range(4))
    bright = cand.features[:, FEATURE["max_grey"]].astype(np.float64)
    for _ in range(rounds):
        acc = np.flatnonzero(accept)
        d = doubtful[~accept[doubtful]]
        if d.size == 0 or acc.size == 0 or d.size * acc.size > 4_000_000:
            break  # nothing to do, or a pathological frame where pairwise tests would cost seconds
        dy = np.minimum(y[d, None] + h[d, None], y[None, acc] + h[None, acc]) - np.maximum(y[d, None], y[None, acc])
        same_row = dy >= 0.5 * np.minimum(h[d, None], h[None, acc])
        gap = np.maximum(x[None, acc] - (x[d, None] + w[d, None]), x[d, None] - (x[None, acc] + w[None, acc]))
        near = gap <= 1.2 * np.maximum(h[d, None], h[None, acc])
        similar = (np.abs(bright[d, None] - bright[None, acc]) <= 40) & (h[d, None] <= 2.5 * h[None, acc]) & (
            h[None, acc] <= 2.5 * h[d, None])
        glyph_sized = (h[None, acc] >= 5) & (h[None, acc] <= 40)
        hit = (same_row & near & similar & glyph_sized).any(axis=1)
        if not hit.any():
            break
        accept[d[hit]] = True
    return accept


def grey_bars(grey: np.ndarray) -> np.ndarray:
    """Grey-scale / colour-scale bars: tall narrow strips, flat along each row, graded top to bottom.

    Why a rule and not the classifier: a bar is 5-40 px wide, wider than any stroke the top-hat
    sees, and no tissue is exactly constant across several columns for dozens of rows.
    """
    h, w = grey.shape
    if w < 8 or h < 40:
        return np.zeros(grey.shape, bool)
    g = grey.astype(np.int16)
    same = np.diff(g, axis=1) == 0
    flat = np.zeros(grey.shape, bool)
    flat[:, 1:-2] = same[:, :-2] & same[:, 1:-1] & same[:, 2:]  # 4 equal pixels in a row
    flat &= grey >= 16
    run = max(40, h // 8)
    # keep only vertical runs of flat pixels at least `run` long (a vertical line opening)
    flat = cv2.morphologyEx(flat.astype(np.uint8), cv2.MORPH_OPEN, np.ones((run, 1), np.uint8)) > 0
    tall = np.flatnonzero(flat.any(axis=0))
    if tall.size == 0:
        return np.zeros(grey.shape, bool)  # no column is flat for long enough: the usual case, cheap
    x_lo, x_hi = max(0, int(tall[0]) - 44), min(w, int(tall[-1]) + 45)
    band = np.zeros(grey.shape, np.uint8)
    band[:, x_lo:x_hi] = flat[:, x_lo:x_hi]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(band, connectivity=4)
    if n <= 1:
        return np.zeros(grey.shape, bool)
    bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
    area = stats[:, cv2.CC_STAT_AREA]
    shape_ok = (bh >= run) & (bw >= 2) & (bw <= 40) & (area >= 0.6 * bw * bh) & (bh >= 2 * bw)
    shape_ok[0] = False
    out = np.zeros(grey.shape, bool)
    for i in np.flatnonzero(shape_ok):
        x, y, cw, ch = stats[i, :4]
        column = grey[y:y + ch, x:x + cw][labels[y:y + ch, x:x + cw] == i]
        if int(column.max()) - int(column.min()) >= 60:  # a graded scale, not a flat panel
            out[max(0, y - 2):y + ch + 2, max(0, x - 3):x + cw + 4] = True  # the 4-pixel test trims the sides
    return out


def ruler_completion(cand: Candidates, prob: np.ndarray, *, p: DetectorParams = PARAMS) -> np.ndarray:
    """Depth rulers: from accepted ticks at one column, the ruler's step; every predicted tick position
    down the frame is then cleared where it stands out (ticks merge with edge speckle)."""
    h_img, w_img = cand.labels.shape
    out = np.zeros((h_img, w_img), bool)
    if cand.n <= 1:
        return out
    x, y, w, h = (cand.boxes[:, i] for i in range(4))
    tick = np.flatnonzero((h <= 4) & (w >= 3) & (w <= 12) & (prob >= p.accept))
    if tick.size < p.ruler_min_ticks:
        return out
    order = tick[np.argsort(x[tick], kind="stable")]
    xs = x[order]
    start = 0
    while start < order.size:
        end = start
        while end + 1 < order.size and xs[end + 1] - xs[start] <= 1:
            end += 1
        group = order[start:end + 1]
        start = end + 1
        if group.size < p.ruler_min_ticks:
            continue
        cy = np.sort(y[group] + h[group] // 2)
        gaps = np.diff(cy).astype(np.float64)
        step = float(np.median(gaps))
        if step < 8:
            continue
        ratio = gaps / step
        if (np.abs(ratio - np.round(ratio)) <= 0.15).mean() < 0.8:
            continue
        x0, x1 = int(x[group].min()) - 1, int((x[group] + w[group]).max()) + 1
        phase = float(np.median(cy - step * np.round(cy / step)))
        rows = np.round(np.arange(phase, h_img, step)).astype(int)
        for r in rows[(rows >= 1) & (rows < h_img - 1)]:
            win = (slice(r - 1, r + 2), slice(max(0, x0), min(w_img, x1)))
            out[win] |= cand.tophat[win] >= p.ruler_tophat
    return out


def touching(cand: Candidates, prob: np.ndarray, keep: np.ndarray, *, p: DetectorParams = PARAMS) -> np.ndarray:
    """Accept doubtful components next to accepted ones (a stroke broken by bright tissue, a glyph in pieces)."""
    out = keep.copy()
    k = 2 * p.touch_gap + 1
    near = cv2.dilate(keep[cand.labels].astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    hit = np.zeros(cand.n, bool)
    hit[cand.labels[near]] = True  # fancy assignment, no sort (np.unique cost about 1 ms)
    doubt = np.concatenate([[False], prob >= p.touch_doubt])
    out |= hit & doubt
    out[0] = False
    return out


def level_growth(grey: np.ndarray, accepted: np.ndarray, tophat: np.ndarray, *, p: DetectorParams = PARAMS) -> np.ndarray:
    """Grow accepted strokes into neighbours drawn at the stroke's own level.

    Why: an overlay is one flat colour; where it crosses bright tissue the seed test drops part of
    the stroke (and the 9x9 top-hat misses the inside of bold glyphs), but those pixels sit at the
    level of the stroke next to them, within p.level_tol; speckle rarely keeps one level for long.
    """
    core = accepted & (tophat >= p.strong_grow_tophat)  # stroke pixels, not their fringe
    level: np.ndarray = np.where(core, grey, 0).astype(np.uint8)
    free: np.ndarray = np.where(accepted, 0, 255).astype(np.uint8)
    for _ in range(p.level_grow_rounds):  # uint8 OpenCV operations: 12 rounds cost about 1 ms on 800x600
        lv = cv2.dilate(level, _SQUARE3)
        same = cv2.threshold(cv2.absdiff(grey, lv), p.level_tol, 255, cv2.THRESH_BINARY_INV)[1]  # |diff| <= tol
        new = cv2.bitwise_and(cv2.bitwise_and(same, free), cv2.threshold(lv, 0, 255, cv2.THRESH_BINARY)[1])
        if cv2.countNonZero(new) == 0:
            break
        free = cv2.bitwise_and(free, cv2.bitwise_not(new))
        level = cv2.bitwise_or(level, cv2.bitwise_and(lv, new))
    return free == 0


def level_match(grey: np.ndarray, accepted: np.ndarray, tophat: np.ndarray, *, p: DetectorParams = PARAMS) -> np.ndarray:
    """Pieces of an overlay near accepted strokes, drawn at exactly their grey level but not touching them.

    Why: a scanner draws a whole label or a dotted line in one flat colour; glyphs or dots that
    busy tissue kept from seeding (the seed test wants 2x the local top-hat) still sit at the level
    of the accepted strokes a few pixels away, which speckle matches only by chance, and rarely in
    several connected pixels. Exact level only: +-1 doubled the false positives (docs/measurements.md).
    """
    def at_least(a: np.ndarray, level: int) -> np.ndarray:  # 255 where a >= level (uint8)
        return np.asarray(cv2.threshold(a, level - 1, 255, cv2.THRESH_BINARY)[1])

    def zero(a: np.ndarray) -> np.ndarray:  # 255 where a == 0 (uint8)
        return np.asarray(cv2.threshold(a, 0, 255, cv2.THRESH_BINARY_INV)[1])

    acc8 = accepted.view(np.uint8)
    core = cv2.bitwise_and(acc8, at_least(tophat, p.strong_grow_tophat))
    if cv2.countNonZero(core) == 0:
        return np.zeros(grey.shape, bool)
    box = np.ones((2 * p.match_radius + 1,) * 2, np.uint8)
    core_grey = cv2.bitwise_and(grey, grey, mask=core)  # stroke level, 0 elsewhere
    highest = cv2.dilate(core_grey, box)  # the brightest and the darkest stroke level within the radius
    lowest = cv2.erode(cv2.bitwise_or(core_grey, zero(core)), box)
    same = cv2.bitwise_or(cv2.compare(grey, highest, cv2.CMP_EQ), cv2.compare(grey, lowest, cv2.CMP_EQ))
    same = cv2.bitwise_and(same, at_least(highest, 1))
    same = cv2.bitwise_and(same, at_least(tophat, p.match_tophat))
    hit = cv2.bitwise_and(same, zero(acc8))
    out = np.zeros(grey.shape, bool)
    x, y, w, h = cv2.boundingRect(hit)
    if w == 0:
        return out
    sub = hit[y:y + h, x:x + w]
    n, labels = cv2.connectedComponents(sub, connectivity=8)  # no stats: 6x faster
    idx = np.flatnonzero(sub > 0)  # sparse from here on (bool: flatnonzero on uint8 is ten times slower)
    lab = labels.ravel()[idx]
    keep = np.zeros(sub.size, bool)
    keep[idx[np.bincount(lab, minlength=n)[lab] >= p.match_min_area]] = True
    out[y:y + h, x:x + w] = keep.reshape(sub.shape)
    return out


def halo(grey: np.ndarray, accepted: np.ndarray, *, p: DetectorParams = PARAMS) -> np.ndarray:
    """Antialiased fringe around accepted strokes: ring pixels brighter than the tissue around them.

    Why: a stroke drawn with antialiasing raises its neighbours by a fraction of its contrast; the
    9x9 top-hat of such a pixel is swamped by speckle, but its level against the mean of the
    non-stroke pixels around it (normalised box filter) still shows the blend.
    """
    acc8 = accepted.astype(np.uint8)
    ring = cv2.dilate(acc8, _SQUARE3).astype(bool) & ~accepted
    idx = np.flatnonzero(ring)
    if idx.size == 0:
        return ring
    # box sums at the ring pixels only, from integral images (a full-frame float blur cost 7 ms)
    h, w = grey.shape
    free = 1 - (ring | accepted).astype(np.uint8) if p.halo_exclude_ring else 1 - acc8
    s_grey = cv2.integral(grey * free)
    s_free = cv2.integral(free)
    y, x = np.divmod(idx, w)
    grey_sum, free_sum = box_sums([s_grey, s_free], y, x, grey.shape, p.halo_window)
    bg = grey_sum / np.maximum(free_sum, 1)
    out = np.zeros(h * w, bool)
    out[idx] = grey.ravel()[idx] - bg >= p.halo_margin
    return out.reshape(h, w)


def detect_annotations(grey: np.ndarray, chroma: np.ndarray | None, rgb_max: np.ndarray | None = None, *,
                       fringe_step: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None,
                       p: DetectorParams = PARAMS) -> Detection:
    """Annotation mask for one field crop (grey uint8; chroma and max over RGB uint8, or None).

    `fringe_step(grey, strokes, tophat)` replaces the fringe classifier (cleaning/train_fringe.py records
    its training pixels through it).
    """
    flags: list[str] = []
    doppler = None
    dop_frac = 0.0
    if chroma is not None:
        doppler = doppler_areas(chroma, grey if rgb_max is None else rgb_max, p=p)
        dop_frac = float(doppler.mean())
        if dop_frac >= 0.005:
            flags.append("doppler")
        else:
            doppler = None
    cand = find_candidates(grey, chroma, exclude=doppler)
    # one- and two-pixel specks are speckle (the smallest drawn dot covers 5 px): not worth scoring
    prob = np.zeros(cand.n - 1)
    scored = cand.features[:, FEATURE["log_area"]] >= np.log1p(3)
    if scored.sum() > p.max_scored:
        # pathological input (pure noise, a corrupt frame): bound the work; keep the strongest
        strength = np.where(scored, cand.features[:, FEATURE["mean_tophat"]] * cand.features[:, FEATURE["log_area"]], -1.0)
        scored = np.zeros_like(scored)
        scored[np.argpartition(-strength, p.max_scored)[:p.max_scored]] = True
        flags.append("noisy")
    prob[scored] = _model().probability(cand.features[scored].astype(np.float64))
    if p.streaks and cand.n > 1:
        prob[tissue_streaks(cand, p=p)] = 0.0
    keep = np.concatenate([[False], complete_text_lines(cand, prob, p=p)])
    if p.touch_doubt < p.accept:
        keep = touching(cand, prob, keep, p=p)
    accepted = keep[cand.labels]
    kinds: list[str] = []
    if accepted.any():
        coloured = cand.features[:, FEATURE["mean_chroma"]] >= COLOUR_CHROMA / 2
        if (keep[1:] & ~coloured).any():
            kinds.append("bright_graphics")
        if (keep[1:] & coloured).any():
            kinds.append("colour_graphics")
        if p.match:
            accepted |= level_match(grey, accepted, cand.tophat, p=p)
        if p.level_grow_rounds:
            accepted = level_growth(grey, accepted, cand.tophat, p=p)
        if p.chroma_grow_rounds and chroma is not None:
            c_ok = chroma >= p.chroma_grow
            if doppler is not None:
                c_ok &= ~doppler
            for _ in range(p.chroma_grow_rounds):
                accepted |= cv2.dilate(accepted.astype(np.uint8), _SQUARE3).astype(bool) & c_ok
        if fringe_step is not None:
            accepted |= fringe_step(grey, accepted, cand.tophat)
        elif p.fringe_classifier:
            for _ in range(p.fringe_rounds):
                accepted |= fringe(grey, accepted, cand.tophat)
        else:
            for _ in range(p.halo_rounds):
                accepted |= halo(grey, accepted, p=p)
    accepted |= ruler_completion(cand, prob, p=p)
    bars = grey_bars(grey)
    if bars.any():
        kinds.append("scale_bar")
        accepted |= bars
    if doppler is not None:
        accepted &= ~doppler  # never inpaint Doppler: it is flagged, not hidden
        bars &= ~doppler
    return Detection(accepted, kinds, flags, dop_frac, int(keep.sum()), bars if bars.any() else None)
