"""Spans of frames sharing one crop box and one feathered union mask Mu (paper Sec. III-C).

Mu unions the horizontal and vertical extents of the span's coarse masks Mc - a rectangle spanning their min..max
extents - and blurs its boundary outwards, so it only marks the approximate mouth position and removes the
audio-related jaw motion from the mask. The crop box is a fixed square, much larger than Mu, so the network sees a
continuous signal across the span; boxes are smoothed across spans so crops do not jump between spans.

Fast motion. The crops are not aligned per frame: a span has one fixed box, so its crop coordinates are its source
coordinates up to a scale, and what widens Mu is the face's own travel across the box during the span (34 px a frame
over a 16-frame window unions 510 px of mouth positions into a band over the background, which the model repaints).
When the union rectangle's area exceeds ``MaskConfig.max_growth`` times the span's largest single-frame Mc rectangle,
the span's masks become *motion-compensated*: the extents are unioned in the face's own frame (each frame's extents
taken relative to a rigid anchor that follows the head but not the jaw, :func:`mouth_masks.face_anchor`) and that one
rectangle is placed back on each frame's anchor (``CropSpan.frame_rects``; ``CropSpan.mask_at``). The mask then has
one shape relative to the face for the whole span - it still covers every jaw position, as Mu must, and it moves
rigidly with the face, like the pixels under it - so the model sees the same masked face region in every frame. A
rectangle still above the bound (a face growing or turning fast) is shrunk towards the frame's own Mc extents, which
it always contains, until its area is the bound. This was chosen over the alternatives: splitting the span into
sub-windows changes the crop box inside the model's window (the crops jump, and the temporal layers see it) and
breaks the one-box-per-window layout the training data rely on; clipping the union to each frame's own mask gives
the jaw motion back to the mask shape (the leak Mu exists to prevent). The box, ``union_mask`` and ``union_rect``
are unchanged (the box still contains the whole travel), and a span under the bound is planned exactly as before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from stabledub_core.errors import CropSpanError
from stabledub_core.face.track import FaceTrack, TrackStatus
from stabledub_core.masks import mouth_masks
from stabledub_core.masks.boxes import Box, box_around, box_scale, smooth_boxes
from stabledub_core.masks.config import MaskConfig


@dataclass(eq=False)
class CropSpan:
    """One span of frames sharing a crop box and a union mask.

    Attributes:
        start: first frame of the span.
        stop: one past its last frame.
        box: (x0, y0, x1, y1) square crop box in source pixels, clamped to the frame.
        union_mask: (S, S) float32 in [0, 1]: feathered Mu in crop coordinates at crop size S.
        active: (n,) bool, frames with a tracked face (status not MISSING); inactive frames pass through unchanged.
        union_rect: (x0, y0, x1, y1) float, Mu's hard rectangle in source pixels (NaN for a pass-through span).
        feather: width of Mu's soft edge outside ``union_rect``, in source pixels.
        own_start: first frame this span writes when spans overlap (the overlap is split at its middle).
        own_stop: one past the last frame it writes.
        landmarks: (n, 478, 2) float32 the span's landmarks in crop coordinates (NaN for frames without a face).
        coarse_dilation: Mc's widening as a fraction of the face width.
        growth: area of ``union_rect`` as a multiple of the largest single-frame Mc rectangle (1 for a still face).
        frame_rects: (n, 4) float64 (x0, y0, x1, y1) source pixels, each frame's motion-compensated Mu rectangle
            when the span's growth was capped (NaN rows for frames without a face), else None (every frame's mask
            is ``union_mask``).
        frame_feathers: (n,) float64 their soft edges in source pixels, or None.

    ``coarse_masks`` ((n, S, S) float32 Mc per frame in crop coordinates, zeros for frames without a face; for the
    latent coarse facial loss) is drawn on first access, so inference, which does not need it, never pays for it.
    """

    start: int
    stop: int
    box: Box
    union_mask: np.ndarray
    active: np.ndarray
    union_rect: tuple[float, float, float, float]
    feather: float
    own_start: int
    own_stop: int
    landmarks: np.ndarray = field(repr=False)
    coarse_dilation: float = 0.0
    growth: float = 1.0
    frame_rects: np.ndarray | None = field(default=None, repr=False)
    frame_feathers: np.ndarray | None = field(default=None, repr=False)
    _mask_cache: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def capped(self) -> bool:
        """True when the union's growth was capped: each frame has its own (motion-compensated) mask."""
        return self.frame_rects is not None

    def mask_at(self, offset: int) -> np.ndarray:
        """The Mu of the span's frame ``offset``: (S, S) float32 in [0, 1], crop coordinates.

        ``union_mask`` itself (not a copy: treat it as read-only) unless the span was capped and the frame has a
        face; then the frame's motion-compensated rectangle, feathered (the last one drawn is kept).
        """
        if self.frame_rects is None or not self.active[offset]:
            return self.union_mask
        if offset not in self._mask_cache:
            scale = box_scale(self.box, self.crop_size)
            origin = np.array([self.box[0], self.box[1], self.box[0], self.box[1]], np.float64)
            mask = feathered_rect((self.frame_rects[offset] - origin) * scale, self.frame_feathers[offset] * scale,
                                  self.crop_size)
            self._mask_cache.clear()
            self._mask_cache[offset] = mask
        return self._mask_cache[offset]

    @property
    def passthrough(self) -> bool:
        """True when no frame of the span has a face: its frames are returned unchanged."""
        return not bool(self.active.any())

    @cached_property
    def coarse_masks(self) -> np.ndarray:
        size = self.crop_size
        raster = np.zeros((size, size), np.uint8)
        out = np.zeros((len(self.active), size, size), np.float32)  # (n, S, S)
        for i in np.flatnonzero(self.active):
            mouth_masks.rasterize(self.landmarks[i], (size, size), dilation=self.coarse_dilation, out=raster)
            out[i] = raster
        return out

    @property
    def crop_size(self) -> int:
        return int(self.union_mask.shape[-1])

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Maps (..., 2) source pixel (x, y) into this span's crop coordinates."""
        x0, y0 = self.box[:2]
        return (np.asarray(points, np.float32) - np.array([x0, y0], np.float32)) * box_scale(self.box, self.crop_size)


def feathered_rect(rect: np.ndarray, feather: float, size: int) -> np.ndarray:
    """A rectangle that is 1 inside and falls to 0 with a cosine ramp over ``feather`` pixels outside.

    The ramp follows the distance to the rectangle, so the outer corners are rounded.

    Args:
        rect: (x0, y0, x1, y1) in raster pixels (pixel i covers [i, i + 1)).
        feather: ramp width in raster pixels (0: a hard edge).
        size: side S of the square raster.

    Returns:
        (S, S) float32.
    """
    x0, y0, x1, y1 = (float(v) for v in rect)
    feather = max(float(feather), 0.0)
    out = np.zeros((size, size), np.float32)
    # Only the rows and columns within reach of the rectangle are evaluated.
    c0, r0 = (max(0, int(np.floor(v - feather - 0.5))) for v in (x0, y0))
    c1, r1 = (min(size, int(np.ceil(v + feather + 0.5))) for v in (x1, y1))
    if c0 >= c1 or r0 >= r1:
        return out
    xs = np.arange(c0, c1, dtype=np.float32) + 0.5
    ys = np.arange(r0, r1, dtype=np.float32) + 0.5
    dx = np.maximum(np.maximum(x0 - xs, xs - x1), 0)  # (w,)
    dy = np.maximum(np.maximum(y0 - ys, ys - y1), 0)  # (h,)
    distance = np.sqrt(dx[None, :] ** 2 + dy[:, None] ** 2)  # (h, w)
    if feather == 0:
        out[r0:r1, c0:c1] = distance <= 0
        return out
    ramp = np.minimum(distance * np.float32(np.pi / feather), np.float32(np.pi))
    out[r0:r1, c0:c1] = 0.5 + 0.5 * np.cos(ramp)
    return out


def _span_ranges(num_frames: int, length: int, overlap: int) -> list[tuple[int, int]]:
    stride = length - overlap
    ranges = []
    for start in range(0, num_frames, stride):
        stop = min(start + length, num_frames)
        ranges.append((start, stop))
        if stop == num_frames:
            break
    return ranges


def _union_rect(extents: np.ndarray, feather: float) -> tuple[np.ndarray, float]:
    """Mu's hard rectangle over (n, 4) coarse-mask extents and its feather width in pixels (NaN, 0 if n = 0)."""
    if len(extents) == 0:
        return np.full(4, np.nan), 0.0
    rect = np.array([*extents[:, :2].min(axis=0), *extents[:, 2:].max(axis=0)], np.float64)
    return rect, feather * float(max(rect[2] - rect[0], rect[3] - rect[1]))


def _area(rects: np.ndarray) -> np.ndarray:
    """(...,) areas of (..., 4) (x0, y0, x1, y1) rectangles."""
    return (rects[..., 2] - rects[..., 0]) * (rects[..., 3] - rects[..., 1])


def growth_of(rect: np.ndarray, extents: np.ndarray) -> float:
    """Area of a union rectangle (4,) as a multiple of the largest of the (n, 4) single-frame extents it unions."""
    single = float(_area(extents).max()) if len(extents) else 0.0
    return float(_area(rect)) / single if single > 0 else 1.0


def compensated_rects(extents: np.ndarray, anchors: np.ndarray, max_growth: float) -> np.ndarray:
    """Motion-compensated union rectangles: the extents unioned in the face's frame, placed on each frame's anchor.

    Args:
        extents: (n, 4) Mc extents (x0, y0, x1, y1) of the span's frames with a face, source pixels.
        anchors: (n, 2) their rigid face anchors (:func:`mouth_masks.face_anchor`).
        max_growth: bound on each rectangle's area as a multiple of the largest single-frame extents' area; a
            rectangle above it is shrunk linearly towards its frame's own extents until its area is the bound.

    Returns:
        (n, 4) float64 rectangles; rectangle ``i`` contains ``extents[i]``.
    """
    extents = np.asarray(extents, np.float64)
    shift = np.tile(np.asarray(anchors, np.float64), 2)  # (n, 4) (ax, ay, ax, ay)
    local = extents - shift  # the extents relative to the face
    aligned = np.array([*local[:, :2].min(axis=0), *local[:, 2:].max(axis=0)])  # (4,) one rectangle for the span
    rects = aligned[None] + shift  # (n, 4)
    target = max_growth * float(_area(extents).max())
    over = _area(rects) > target
    if over.any():
        # area(own + t * (rect - own)) = target for t in [0, 1]: (w + t dw)(h + t dh) = target.
        own = extents[over]
        w, h = own[:, 2] - own[:, 0], own[:, 3] - own[:, 1]
        delta = rects[over] - own
        dw, dh = delta[:, 2] - delta[:, 0], delta[:, 3] - delta[:, 1]
        a, b, c = dw * dh, w * dh + h * dw, w * h - target
        root = np.sqrt(np.maximum(b * b - 4 * a * c, 0))
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(a > 1e-9, (root - b) / (2 * a), -c / np.maximum(b, 1e-9))
        rects[over] = own + np.clip(t, 0, 1)[:, None] * delta
    return rects


def plan_crop_spans(
    track: FaceTrack,
    length: int,
    overlap: int = 0,
    crop_size: int = 512,
    config: MaskConfig | None = None,
    previous_box: Box | None = None,
) -> list[CropSpan]:
    """Splits a track into spans and computes each span's crop box, Mu and per-frame Mc.

    MISSING frames are left out of the unions; a span with no tracked frame is a pass-through span (its
    masks are all zero and its box follows its neighbours').

    Args:
        track: the face track of the whole clip.
        length: frames per span (the model's window, ``config.num_frames``).
        overlap: frames shared by consecutive spans (0: the spans partition the clip).
        crop_size: side S of the model-resolution crops.
        config: mask geometry; defaults to ``MaskConfig()``.
        previous_box: when a long video is planned in groups of spans, the box of the last span of the
            previous group: smoothing continues from it so crops do not jump between groups.

    Returns:
        The spans in frame order; their frame indices count from the track's first frame (for a streamed
        chunk, add ``track.start`` for video indices).
    """
    config = config or MaskConfig()
    if length < 1 or not 0 <= overlap < length:
        raise CropSpanError(f"need length >= 1 and 0 <= overlap < length, got length={length}, overlap={overlap}")
    if crop_size < 8:
        raise CropSpanError(f"crop_size must be at least 8 pixels, got {crop_size}")
    status = np.asarray(track.status)
    landmarks = np.asarray(track.landmarks, np.float32)
    if landmarks.shape[0] != status.shape[0]:
        raise CropSpanError(f"track has {landmarks.shape[0]} landmark frames but {status.shape[0]} statuses")
    if status.shape[0] == 0:
        raise CropSpanError("the track has no frames")
    active = (status != TrackStatus.MISSING) & np.isfinite(landmarks).all(axis=(1, 2))  # (F,)
    extents = mouth_masks.coarse_extents(landmarks, config.coarse_dilation)  # (F, 4)
    ranges = _span_ranges(len(status), length, overlap)

    rects, feathers, reaches, growths, capped = [], [], [], [], []
    for start, stop in ranges:
        own = extents[start:stop][active[start:stop]]  # (n_active, 4)
        rect, feather = _union_rect(own, config.feather)
        reach = rect + np.array([-feather, -feather, feather, feather])  # Mu with its soft edge
        growth = growth_of(rect, own) if len(own) else 1.0
        frame_rects = frame_feathers = None
        if growth > config.max_growth:
            anchors = mouth_masks.face_anchor(landmarks[start:stop][active[start:stop]])  # (n_active, 2)
            frame_rects = np.full((stop - start, 4), np.nan)
            frame_rects[active[start:stop]] = compensated_rects(own, anchors, config.max_growth)
            sides = np.maximum(frame_rects[:, 2] - frame_rects[:, 0], frame_rects[:, 3] - frame_rects[:, 1])
            frame_feathers = config.feather * sides  # (n,) NaN for frames without a face
            inner = frame_rects[active[start:stop]]
            edge = frame_feathers[active[start:stop], None]
            # The box must show every frame's mask with its soft edge, as well as the plain union.
            reach = np.concatenate([np.minimum(reach[:2], (inner[:, :2] - edge).min(axis=0)),
                                    np.maximum(reach[2:], (inner[:, 2:] + edge).max(axis=0))])
        rects.append(rect)
        feathers.append(feather)
        reaches.append(reach)
        growths.append(growth)
        capped.append((frame_rects, frame_feathers))
    wanted = [box_around(reach, config.box_scale, config.box_shift_y, config.min_box)
              if np.isfinite(reach).all() else np.full(3, np.nan) for reach in reaches]
    boxes = smooth_boxes(np.array(wanted), np.array(reaches), config.box_smoothing, track.frame_size,
                         previous=previous_box)

    spans = []
    for k, ((start, stop), box, rect, feather, growth, (frame_rects, frame_feathers)) in enumerate(
            zip(ranges, boxes, rects, feathers, growths, capped)):
        scale = box_scale(box, crop_size)
        span_active = active[start:stop].copy()
        if span_active.any():
            offset = np.array([box[0], box[1], box[0], box[1]], np.float64)
            union = feathered_rect((rect - offset) * scale, feather * scale, crop_size)
        else:
            union = np.zeros((crop_size, crop_size), np.float32)
        crop_landmarks = (landmarks[start:stop] - np.array(box[:2], np.float32)) * np.float32(scale)
        crop_landmarks[~span_active] = np.nan
        own_start = 0 if k == 0 else (start + ranges[k - 1][1]) // 2
        own_stop = len(status) if k == len(ranges) - 1 else (ranges[k + 1][0] + stop) // 2
        spans.append(CropSpan(start=start, stop=stop, box=box, union_mask=union,
                              active=span_active, union_rect=tuple(float(v) for v in rect),
                              feather=float(feather), own_start=own_start, own_stop=own_stop,
                              landmarks=crop_landmarks, coarse_dilation=config.coarse_dilation,
                              growth=float(growth), frame_rects=frame_rects, frame_feathers=frame_feathers))
    return spans



@dataclass(frozen=True)
class MaskCaps:
    """How often fast motion made a union mask grow past its bound (``MaskConfig.max_growth``) in a plan.

    Attributes:
        spans: spans whose masks were motion-compensated instead of their union (see the module's docstring).
        frames: frames of those spans.
        total_spans: spans planned.
        widest: the largest growth seen in a capped span (how many single-frame masks its union would have been).
        limit: the bound.
    """

    spans: int = 0
    frames: int = 0
    total_spans: int = 0
    widest: float = 1.0
    limit: float = MaskConfig.max_growth

    @classmethod
    def of(cls, spans: list[CropSpan], limit: float) -> "MaskCaps":
        """The count over some spans."""
        capped = [w for w in spans if w.capped]
        return cls(len(capped), sum(w.stop - w.start for w in capped), len(spans),
                   max((w.growth for w in capped), default=1.0), float(limit))

    def __add__(self, other: "MaskCaps") -> "MaskCaps":
        return MaskCaps(self.spans + other.spans, self.frames + other.frames, self.total_spans + other.total_spans,
                        max(self.widest, other.widest), self.limit)

    def as_dict(self) -> dict:
        """For a JSON report."""
        return {"capped_windows": self.spans, "capped_frames": self.frames, "windows": self.total_spans,
                "widest_growth": round(self.widest, 2), "max_growth": self.limit}


SPANS_PER_GROUP = 8  # spans planned together by CropPlan (box smoothing runs within a group, then continues)


class CropPlan:
    """Crop boxes and union masks of every frame of a clip, planned in groups of spans on demand.

    The one planner of the pipeline: the streaming dub asks it frame by frame, the modular graph's Plan Masks node
    hands the same object to the crop, exposure and paste nodes. Spans are aligned to multiples of ``span_length``
    output frames (the model's window), so a frame gets the same box in every sampler chunk that contains it;
    boxes continue smoothly from one group to the next.

    Args:
        track: The face track of the source frames.
        crop_size: Side S of the model-resolution crops.
        span_length: Frames sharing one crop box and one union mask (the model's window, ``config.num_frames``).
        config: Mask geometry.
        index: ``(F_out,)`` source frame of each output frame (a length plan's), default every source frame once.
        keep_all: Keep every planned group (random access; in-memory clips). False keeps only the last two
            groups, so memory does not grow with the video's length (streaming, frames asked in order).
    """

    def __init__(self, track: FaceTrack, crop_size: int, span_length: int, config: MaskConfig | None = None,
                 index: np.ndarray | None = None, keep_all: bool = True):
        self.track, self.crop_size, self.span_length = track, int(crop_size), int(span_length)
        self.config = config or MaskConfig()
        self.index = np.arange(len(track)) if index is None else np.asarray(index, np.int64)
        self.keep_all = keep_all
        self.group = self.span_length * SPANS_PER_GROUP
        self._groups: dict[int, list[CropSpan]] = {}
        self._caps: dict[int, MaskCaps] = {}  # per planned group (a group planned again is not counted twice)

    def __len__(self) -> int:
        """Output frames the plan covers."""
        return len(self.index)

    def _plan(self, g: int) -> list[CropSpan]:
        """The spans of group ``g``, planning the groups before it first (each continues its predecessor's box)."""
        if g not in self._groups:
            first = g
            while first > 0 and first - 1 not in self._groups:
                first -= 1
            for k in range(first, g + 1):
                self._add_group(k)
        return self._groups[g]

    def _add_group(self, g: int) -> None:
        previous = self._groups[g - 1][-1].box if g > 0 else None  # boxes continue smoothly across groups
        first = g * self.group
        frames = self.index[first:first + self.group]
        sub = FaceTrack(self.track.landmarks[frames], self.track.status[frames], self.track.frame_size)
        spans = [dataclasses.replace(w, start=w.start + first, stop=w.stop + first,
                                       own_start=w.own_start + first, own_stop=w.own_stop + first)
                   for w in plan_crop_spans(sub, length=self.span_length, overlap=0, crop_size=self.crop_size,
                                         config=self.config, previous_box=previous)]
        if not self.keep_all:
            self._groups = {k: v for k, v in self._groups.items() if k == g - 1}
        self._groups[g] = spans
        self._caps[g] = MaskCaps.of(spans, self.config.max_growth)

    @property
    def caps(self) -> MaskCaps:
        """Spans of the groups planned so far whose union growth was capped (all of them once every frame was
        asked for)."""
        return sum(self._caps.values(), MaskCaps(limit=self.config.max_growth))

    def span_at(self, i: int) -> tuple[CropSpan, int]:
        """``(span, offset)``: the span of output frame ``i`` and ``i``'s position in it."""
        if not 0 <= i < len(self.index):
            raise CropSpanError(f"frame {i} is outside the plan's {len(self.index)} frames")
        span = self._plan(i // self.group)[(i % self.group) // self.span_length]
        return span, i - span.start

    def spans(self) -> list[CropSpan]:
        """Every span in frame order."""
        return [w for g in range(-(-len(self.index) // self.group)) for w in self._plan(g)]

    def check_frames(self, num_frames: int) -> None:
        """Raise a clear error if the plan was made for a clip of another length."""
        if num_frames != len(self.index):
            raise CropSpanError(f"the masks were planned for {len(self.index)} frames but the clip has "
                                  f"{num_frames}: plan them on the same frames")


def single_frame_span(span: CropSpan, offset: int) -> CropSpan:
    """A one-frame view of a span (for per-frame occluder exposure): its ``union_mask`` is the frame's own Mu."""
    return dataclasses.replace(span, start=0, stop=1, own_start=0, own_stop=1,
                               active=span.active[offset:offset + 1],
                               landmarks=span.landmarks[offset:offset + 1], union_mask=span.mask_at(offset),
                               frame_rects=None, frame_feathers=None)
