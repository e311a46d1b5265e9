"""Detect burned-in annotations inside a field: text, calipers, lines, arrows, markers, coloured overlay;
flag colour Doppler instead of erasing it.

Why this design: overlays are drawn in one flat colour, in strokes a few pixels wide with sharp
edges, brighter than or coloured unlike their surroundings. Candidate components (white top-hat or
colour) are scored by a small boosted-tree classifier trained on synthetic burn-ins
(cleaning/train_detector.py). Accepted strokes are then completed pixel by pixel with what overlays
are: flat (grow along the stroke's own grey level, and take pieces nearby at exactly that level),
coloured (grow into faintly coloured pixels, which grey tissue never is), and antialiased (the ring
of pixels around the strokes, decided pixel by pixel by a second small classifier, cleaning/fringe.py).
Lowering thresholds instead always cost more precision than it gained recall (docs/cleaning.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np

from sonopacs.cleaning import trees
from sonopacs.cleaning.features import COLOUR_CHROMA, FEATURE_NAMES, Candidates, find_candidates
from sonopacs.cleaning.fringe import box_sums, fringe
from sonopacs.cleaning.trees import TreeEnsemble

ACCEPT = 0.3  # classifier probability above which a candidate component is an overlay (was 0.4; see docs)
LINE_DOUBT = 0.15  # below this a component is not rescued by text-line neighbours (0.05 took tissue next to text)
GROW_ROUNDS = 0  # top-hat fringe growth, replaced by the halo test (1 round at 12: recall +3.4 pt, precision -7 pt)
MAX_SCORED = 20_000  # candidate components scored per field; a real frame has a few thousand at most
STRONG_GROW_ROUNDS = 0  # measured: 2 rounds at 30 give +2.7 pt recall, -7 pt precision
STRONG_GROW_TOPHAT = 30
FRINGE_TOPHAT = 12  # grow accepted strokes into neighbours at least this far above the local opening
FRINGE_CLASSIFIER = True  # learned fringe (cleaning/fringe.py); False restores the halo margin rule for comparison
FRINGE_ROUNDS = 1  # a second ring at p >= 0.2: recall +0.6 pt, precision -3 pt (docs/cleaning.md)
HALO_ROUNDS = 1  # pixel rings around accepted strokes tested against the local tissue level
HALO_MARGIN = 10  # a halo pixel is kept when this many grey levels above the tissue mean around it
HALO_EXCLUDE_RING = True  # leave the ring itself out of that mean: the bright fringe raised it (+0.9 pt recall)
HALO_WINDOW = 7  # box (px) over which the tissue mean around a halo pixel is taken
CHROMA_GROW_ROUNDS = 2  # rings of faintly coloured pixels added around accepted strokes
CHROMA_GROW = 10  # chroma of such a pixel (grey tissue has none; a blend with a colour stroke has)
LEVEL_GROW_ROUNDS = 12  # rings of pixels at the stroke's own grey level added around accepted strokes
LEVEL_TOL = 2  # grey levels: overlays are drawn flat; 3-4 let speckle in (docs/cleaning.md)
TOUCH_DOUBT = 0.1  # doubtful components (p >= this) within TOUCH_GAP px of an accepted stroke are accepted too
TOUCH_GAP = 2  # px
RULER_MIN_TICKS = 4  # accepted short ticks at one column, evenly spaced, that make a depth ruler
RULER_TOPHAT = 20  # pixels at a ruler's predicted tick positions kept at this top-hat
MATCH_RADIUS = 20  # px around accepted strokes searched for pieces at their level
MATCH_TOPHAT = 20
MATCH_MIN_AREA = 4  # connected pixels at that level
MATCH = True  # level matching (below): fold 2 recall +0.8 pt, precision -0.8 pt
DOPPLER_MIN_CORE = 30  # = 0.1 x the smallest map area (300 px) below
STREAKS = True  # tissue-streak rule (below)
STREAK_MIN_WIDTH = 20  # px: tissue-streak rule (long thin horizontal grey components that are not flat)
STREAK_ASPECT = 3.0
STREAK_MAX_HEIGHT = 8
STREAK_PLATEAU = 0.4  # share of pixels within 12 levels of the component's max; overlay lines are flat
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


@lru_cache(maxsize=1)
def _model() -> TreeEnsemble:
    return TreeEnsemble.from_json(trees.MODEL_PATH)


def doppler_areas(chroma: np.ndarray, rgb_max: np.ndarray) -> np.ndarray:
    """Coloured areas that are maps, not graphics: Doppler or elastography.

    Why erosion: overlay graphics, even big coloured text or a coloured box, are strokes a few
    pixels wide and vanish under a 7x7 erosion; a colour-flow map is made of blobs that survive it.
    Brightness spread (a colour scale from dark red to yellow) backs the call for sparse maps.
    """
    coloured = (chroma >= COLOUR_CHROMA).astype(np.uint8)
    core_img = cv2.erode(coloured, _ELLIPSE7)
    if cv2.countNonZero(core_img) < DOPPLER_MIN_CORE:
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


def tissue_streaks(cand: Candidates) -> np.ndarray:
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
    return ((w >= STREAK_MIN_WIDTH) & (w >= STREAK_ASPECT * h) & (h <= STREAK_MAX_HEIGHT)
            & (f[:, FEATURE_NAMES.index("plateau")] < STREAK_PLATEAU)
            & (f[:, FEATURE_NAMES.index("mean_chroma")] < COLOUR_CHROMA / 2))


def complete_text_lines(cand: Candidates, prob: np.ndarray, rounds: int = 3) -> np.ndarray:
    """Accept doubtful components that sit in a text line with accepted ones.

    Why: a blurred or thin glyph alone looks like speckle, but letters come in rows of similar
    height and brightness; a neighbour on the same line, one glyph-height away, settles it.
    """
    accept = prob >= ACCEPT
    doubtful = np.flatnonzero((prob >= LINE_DOUBT) & ~accept)
    if doubtful.size == 0 or not accept.any():
        return accept
    x, y, w, h = (cand.boxes[:, i].astype(np.float64) for i in range(4))
    bright = cand.features[:, 9].astype(np.float64)  # max grey
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


def ruler_completion(cand: Candidates, prob: np.ndarray) -> np.ndarray:
    """Depth rulers: from accepted ticks at one column, the ruler's step; every predicted tick position
    down the frame is then cleared where it stands out (ticks merge with edge speckle)."""
    h_img, w_img = cand.labels.shape
    out = np.zeros((h_img, w_img), bool)
    if cand.n <= 1:
        return out
    x, y, w, h = (cand.boxes[:, i] for i in range(4))
    tick = np.flatnonzero((h <= 4) & (w >= 3) & (w <= 12) & (prob >= ACCEPT))
    if tick.size < RULER_MIN_TICKS:
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
        if group.size < RULER_MIN_TICKS:
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
            out[win] |= cand.tophat[win] >= RULER_TOPHAT
    return out


def touching(cand: Candidates, prob: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Accept doubtful components next to accepted ones (a stroke broken by bright tissue, a glyph in pieces)."""
    out = keep.copy()
    k = 2 * TOUCH_GAP + 1
    near = cv2.dilate(keep[cand.labels].astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    hit = np.zeros(cand.n, bool)
    hit[cand.labels[near]] = True  # fancy assignment, no sort (np.unique cost about 1 ms)
    doubt = np.concatenate([[False], prob >= TOUCH_DOUBT])
    out |= hit & doubt
    out[0] = False
    return out


def level_growth(grey: np.ndarray, accepted: np.ndarray, tophat: np.ndarray) -> np.ndarray:
    """Grow accepted strokes into neighbours drawn at the stroke's own level.

    Why: an overlay is one flat colour; where it crosses bright tissue the seed test drops part of
    the stroke (and the 9x9 top-hat misses the inside of bold glyphs), but those pixels sit at the
    level of the stroke next to them, within LEVEL_TOL; speckle rarely keeps one level for long.
    """
    core = accepted & (tophat >= STRONG_GROW_TOPHAT)  # stroke pixels, not their fringe
    level: np.ndarray = np.where(core, grey, 0).astype(np.uint8)
    free: np.ndarray = np.where(accepted, 0, 255).astype(np.uint8)
    for _ in range(LEVEL_GROW_ROUNDS):  # uint8 OpenCV operations: 12 rounds cost about 1 ms on 800x600
        lv = cv2.dilate(level, _SQUARE3)
        same = cv2.threshold(cv2.absdiff(grey, lv), LEVEL_TOL, 255, cv2.THRESH_BINARY_INV)[1]  # |diff| <= tol
        new = cv2.bitwise_and(cv2.bitwise_and(same, free), cv2.threshold(lv, 0, 255, cv2.THRESH_BINARY)[1])
        if cv2.countNonZero(new) == 0:
            break
        free = cv2.bitwise_and(free, cv2.bitwise_not(new))
        level = cv2.bitwise_or(level, cv2.bitwise_and(lv, new))
    return free == 0


def level_match(grey: np.ndarray, accepted: np.ndarray, tophat: np.ndarray) -> np.ndarray:
    """Pieces of an overlay near accepted strokes, drawn at exactly their grey level but not touching them.

    Why: a scanner draws a whole label or a dotted line in one flat colour; glyphs or dots that
    busy tissue kept from seeding (the seed test wants 2x the local top-hat) still sit at the level
    of the accepted strokes a few pixels away, which speckle matches only by chance, and rarely in
    several connected pixels. Exact level only: +-1 doubled the false positives (docs/cleaning.md).
    """
    def at_least(a: np.ndarray, level: int) -> np.ndarray:  # 255 where a >= level (uint8)
        return np.asarray(cv2.threshold(a, level - 1, 255, cv2.THRESH_BINARY)[1])

    def zero(a: np.ndarray) -> np.ndarray:  # 255 where a == 0 (uint8)
        return np.asarray(cv2.threshold(a, 0, 255, cv2.THRESH_BINARY_INV)[1])

    acc8 = accepted.view(np.uint8)
    core = cv2.bitwise_and(acc8, at_least(tophat, STRONG_GROW_TOPHAT))
    if cv2.countNonZero(core) == 0:
        return np.zeros(grey.shape, bool)
    box = np.ones((2 * MATCH_RADIUS + 1,) * 2, np.uint8)
    core_grey = cv2.bitwise_and(grey, grey, mask=core)  # stroke level, 0 elsewhere
    highest = cv2.dilate(core_grey, box)  # the brightest and the darkest stroke level within the radius
    lowest = cv2.erode(cv2.bitwise_or(core_grey, zero(core)), box)
    same = cv2.bitwise_or(cv2.compare(grey, highest, cv2.CMP_EQ), cv2.compare(grey, lowest, cv2.CMP_EQ))
    same = cv2.bitwise_and(same, at_least(highest, 1))
    same = cv2.bitwise_and(same, at_least(tophat, MATCH_TOPHAT))
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
    keep[idx[np.bincount(lab, minlength=n)[lab] >= MATCH_MIN_AREA]] = True
    out[y:y + h, x:x + w] = keep.reshape(sub.shape)
    return out


def halo(grey: np.ndarray, accepted: np.ndarray) -> np.ndarray:
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
    free = 1 - (ring | accepted).astype(np.uint8) if HALO_EXCLUDE_RING else 1 - acc8
    s_grey = cv2.integral(grey * free)
    s_free = cv2.integral(free)
    y, x = np.divmod(idx, w)
    grey_sum, free_sum = box_sums([s_grey, s_free], y, x, grey.shape, HALO_WINDOW)
    bg = grey_sum / np.maximum(free_sum, 1)
    out = np.zeros(h * w, bool)
    out[idx] = grey.ravel()[idx] - bg >= HALO_MARGIN
    return out.reshape(h, w)


def detect_annotations(grey: np.ndarray, chroma: np.ndarray | None, rgb_max: np.ndarray | None = None, *,
                       fringe_step: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None) -> Detection:
    """Annotation mask for one field crop (grey uint8; chroma and max over RGB uint8, or None).

    `fringe_step(grey, strokes, tophat)` replaces the fringe classifier (cleaning/train_fringe.py records
    its training pixels through it).
    """
    flags: list[str] = []
    doppler = None
    dop_frac = 0.0
    if chroma is not None:
        doppler = doppler_areas(chroma, grey if rgb_max is None else rgb_max)
        dop_frac = float(doppler.mean())
        if dop_frac >= 0.005:
            flags.append("doppler")
        else:
            doppler = None
    cand = find_candidates(grey, chroma, exclude=doppler)
    # one- and two-pixel specks are speckle (the smallest drawn dot covers 5 px): not worth scoring
    prob = np.zeros(cand.n - 1)
    scored = cand.features[:, 0] >= np.log1p(3)
    if scored.sum() > MAX_SCORED:
        # pathological input (pure noise, a corrupt frame): bound the work; keep the strongest
        strength = np.where(scored, cand.features[:, 6] * cand.features[:, 0], -1.0)  # mean top-hat x log area
        scored = np.zeros_like(scored)
        scored[np.argpartition(-strength, MAX_SCORED)[:MAX_SCORED]] = True
        flags.append("noisy")
    prob[scored] = _model().probability(cand.features[scored].astype(np.float64))
    if STREAKS and cand.n > 1:
        prob[tissue_streaks(cand)] = 0.0
    keep = np.concatenate([[False], complete_text_lines(cand, prob)])
    if TOUCH_DOUBT < ACCEPT:
        keep = touching(cand, prob, keep)
    accepted = keep[cand.labels]
    kinds: list[str] = []
    if accepted.any():
        coloured = cand.features[:, 16] >= COLOUR_CHROMA / 2
        if (keep[1:] & ~coloured).any():
            kinds.append("bright_graphics")
        if (keep[1:] & coloured).any():
            kinds.append("colour_graphics")
        strong = cand.tophat >= STRONG_GROW_TOPHAT
        for _ in range(STRONG_GROW_ROUNDS):  # stroke pixels the seed test dropped next to busy texture
            accepted |= cv2.dilate(accepted.astype(np.uint8), _SQUARE3).astype(bool) & strong
        for _ in range(GROW_ROUNDS):  # antialiased / JPEG-softened edges, one pixel ring per round
            accepted |= cv2.dilate(accepted.astype(np.uint8), _SQUARE3).astype(bool) & (cand.tophat >= FRINGE_TOPHAT)
        if MATCH:
            accepted |= level_match(grey, accepted, cand.tophat)
        if LEVEL_GROW_ROUNDS:
            accepted = level_growth(grey, accepted, cand.tophat)
        if CHROMA_GROW_ROUNDS and chroma is not None:
            c_ok = chroma >= CHROMA_GROW
            if doppler is not None:
                c_ok &= ~doppler
            for _ in range(CHROMA_GROW_ROUNDS):
                accepted |= cv2.dilate(accepted.astype(np.uint8), _SQUARE3).astype(bool) & c_ok
        if fringe_step is not None:
            accepted |= fringe_step(grey, accepted, cand.tophat)
        elif FRINGE_CLASSIFIER:
            for _ in range(FRINGE_ROUNDS):
                accepted |= fringe(grey, accepted, cand.tophat)
        else:
            for _ in range(HALO_ROUNDS):
                accepted |= halo(grey, accepted)
    accepted |= ruler_completion(cand, prob)
    bars = grey_bars(grey)
    if bars.any():
        kinds.append("scale_bar")
        accepted |= bars
    if doppler is not None:
        accepted &= ~doppler  # never inpaint Doppler: it is flagged, not hidden
        bars &= ~doppler
    return Detection(accepted, kinds, flags, dop_frac, int(keep.sum()), bars if bars.any() else None)
