"""The stages of a dub, one function each, shared by every entry point.

    track faces -> plan crop spans -> conditions (habit, reference) -> crop + mask -> generate chunks -> stitch
    -> composite

The streaming dub (``pipeline/dub.py``: the CLI and the all-in-one node) runs them frame by frame over a source and a
sink; the modular ComfyUI graph runs each as a node over a whole clip in memory. Both call the functions below, so
they compute the same frames (``tests/nodes/test_entry_points.py``).

A source is anything with the :class:`~stabledub_core.media.video.VideoReader` interface (a file, or
:class:`~stabledub_core.media.frames.FrameSource` for frames in memory); a sink anything with ``write(image, time)``.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator

import numpy as np

from stabledub_core.errors import EmptyMediaError, NoFaceError, OptionError
from stabledub_core.face.selection import FaceSelection
from stabledub_core.face.track import FaceTrack, FaceTracker, TrackBuilder
from stabledub_core.masks.crop_spans import CropPlan, CropSpan, single_frame_span
from stabledub_core.masks.exposure import ExposedPatches, apply, from_occluder, grid_size
from stabledub_core.masks.lips import lip_crops
from stabledub_core.masks.reference import ReferenceStrategy, choose_reference
from stabledub_core.media.frames import to_uint8
from stabledub_core.media.video import Run
from stabledub_core.pipeline.chunk_model import ChunkModel
from stabledub_core.pipeline.composite import PasteWeight, crop_frames, paste_back
from stabledub_core.pipeline.conditions import habit_segment
from stabledub_core.pipeline.options import MaskOptions, SamplingOptions, TrackingOptions, stream_seed
from stabledub_core.pipeline.windows import Chunk, plan_chunks, stitch_images
from stabledub_core.runtime import ProgressCallback, StageTimer, StopCheck, check_interrupt


def face_selection(tracking: TrackingOptions | None) -> dict:
    """The ``TrackerConfig`` fields of the tracking options' face choice.

    ``largest`` keeps the tracker's default (the largest face that continues the track); ``index`` and ``point``
    pick the face once, where its track starts, and then follow it (the nearest face), so that people crossing or
    changing size do not swap the speaker.
    """
    if tracking is None or tracking.face == "largest":
        return {}
    if tracking.face == "index":
        return {"selection": FaceSelection.NEAREST, "initial_selection": FaceSelection.INDEX,
                "face_index": tracking.face_index}
    return {"selection": FaceSelection.NEAREST, "initial_selection": FaceSelection.POINT,
            "face_point": (float(tracking.face_x), float(tracking.face_y))}


def track_faces(source, face_model, clock: StageTimer | None = None, on_progress: ProgressCallback | None = None,
                should_stop: StopCheck | None = None, tracking: TrackingOptions | None = None) -> FaceTrack:
    """Landmarks of every source frame, streaming (only the landmarks are kept).

    Args:
        source: A video source (``VideoReader`` or ``FrameSource``).
        face_model: MediaPipe ``face_landmarker.task``.
        clock: Stage timer to add to (``decode``, ``track``).
        on_progress: Called as ``on_progress("track", done, total)``.
        should_stop: Polled per frame.
        tracking: Which face to follow when there are several (default: the largest).

    Returns:
        The clip's :class:`~stabledub_core.face.track.FaceTrack`; its ``choice`` says which face it follows.

    Raises:
        EmptyMediaError: If the video has fewer than 2 frames.
        NoFaceError: If no frame has a face.
    """
    clock = clock or StageTimer()
    total = source.stream.frames or 0
    builder = TrackBuilder(total)
    with FaceTracker(face_model, **face_selection(tracking)) as tracker:
        frames = source.frames()
        while True:
            check_interrupt(should_stop)
            with clock.stage("decode"):
                frame = next(frames, None)
            if frame is None:
                break
            with clock.stage("track"):
                chunk = tracker.feed(frame.image, frame.time)
            if chunk is not None:
                builder.append(chunk)
            if on_progress is not None:
                on_progress("track", frame.index + 1, max(total, frame.index + 1))
        last = tracker.flush()
        choice, faces_seen = tracker.choice, tracker.faces_seen
        if choice is not None:
            choice = dataclasses.replace(choice, faces=max(choice.faces, tracker.faces_seen))
    if last is not None:
        builder.append(last)
    if source.num_frames < 2:
        raise EmptyMediaError(f"video {str(source.path)!r} has {source.num_frames} frame(s); dubbing needs at "
                              "least 2: give a real video, not a still image")
    track = builder.build()
    track.choice = choice
    if not track.valid.any() and faces_seen and tracking is not None and tracking.face == "index":
        raise NoFaceError(f"face_index {tracking.face_index} asks for face {tracking.face_index} from the left "
                          f"(numbered from 0), but at most {faces_seen} face(s) were seen in {str(source.path)!r}: "
                          f"give a face_index from 0 to {faces_seen - 1}")
    if not track.valid.any():
        raise NoFaceError(f"no face found in any of the {len(track)} frames of {str(source.path)!r}: give a video "
                          "where a face is visible (frontal, not too small)")
    return track


def read_frames(source, indices: Iterable[int]) -> np.ndarray:
    """``(k, H, W, 3)`` uint8 images of a few source frames (seeking)."""
    return np.stack(list(source.frames_at([Run(int(i), 1, 1) for i in indices])))


def habit_lip_crops(source, track: FaceTrack, lip_size: int, frames: int, seed: int) -> np.ndarray:
    """Lip crops of the lip-habit segment: a run of tracked frames, shuffled (``conditions.habit_segment``).

    Args:
        source: The video the habit is taken from (the dubbed one, or another video of the speaker).
        track: Its ``FaceTrack``.
        lip_size: Side of the lip crops (the model's ``config.habit.lip_size``).
        frames: K, frames in the segment (at most the clip's length).
        seed: The user's seed (its ``habit`` stream picks and shuffles the segment).

    Returns:
        ``(K, lip_size, lip_size, 3)`` uint8 lip crops.
    """
    picks = [int(i) for i in habit_segment(track.status, min(frames, len(track)), stream_seed(seed, "habit"))]
    return lip_crops(read_frames(source, picks), track.landmarks[picks], lip_size)


def reference_frame(source, track: FaceTrack, strategy: str, seed: int) -> np.ndarray:
    """The appearance reference frame.

    Args:
        source: The video source.
        track: Its ``FaceTrack``.
        strategy: A :class:`~stabledub_core.masks.reference.ReferenceStrategy` value (``closed_lips``,
            ``nearest_pose``, ``closed_lips_near_pose``, ``random``).
        seed: The user's seed (its ``reference`` stream drives the ``random`` strategy).

    Returns:
        ``(H, W, 3)`` uint8 image.
    """
    try:
        kind = ReferenceStrategy(strategy)
    except ValueError:
        raise OptionError(f"unknown reference strategy {strategy!r}; choose one of "
                          f"{', '.join(s.value for s in ReferenceStrategy)}") from None
    index = choose_reference(track.landmarks, track.status, kind, stream_seed(seed, "reference"))
    return read_frames(source, [index])[0]


def check_occluder(occluder, num_frames: int, size: tuple[int, int]) -> np.ndarray | None:
    """An occluder mask as float32 ``(F_src, H, W)`` (one for every source frame), or None.

    Args:
        occluder: ``(H, W)`` (the same for every frame), ``(1, H, W)`` or ``(F_src, H, W)``, or None; white = an
            occluder in front of the mouth whose pixels are kept.
        num_frames: F_src, frames of the source clip.
        size: ``(H, W)`` of the frames.

    Raises:
        OptionError: For any other shape.
    """
    if occluder is None:
        return None
    occluder = np.asarray(occluder, np.float32)
    if occluder.ndim == 2:
        occluder = occluder[None]
    if occluder.ndim != 3 or occluder.shape[1:] != tuple(size) or occluder.shape[0] not in (1, num_frames):
        raise OptionError(f"the occluder mask has shape {occluder.shape} but the clip has {num_frames} frames of "
                          f"{size[1]}x{size[0]}: give one (H, W) mask for all frames or one per frame (F, H, W)")
    return np.broadcast_to(occluder, (num_frames, *size))


def check_reference(reference, size: tuple[int, int]) -> np.ndarray | None:
    """A given appearance frame as ``(H, W, 3)`` uint8, or None.

    Args:
        reference: ``(H, W, 3)`` uint8 or float in [0, 1] image at the clip's frame size, or None. The crops are cut
            from it with the source's face boxes, so its face must be where the source's is.
        size: ``(H, W)`` of the clip's frames.

    Raises:
        OptionError: For any other shape.
    """
    if reference is None:
        return None
    reference = np.asarray(reference)
    if reference.shape != (*size, 3):
        raise OptionError(f"the reference frame has shape {reference.shape} but the clip's frames are "
                          f"{size[1]}x{size[0]}: give one RGB frame of the clip's size, the face where the clip's is")
    return to_uint8(reference)


def crop_frame(image: np.ndarray, span: CropSpan, crop_size: int) -> np.ndarray:
    """One frame (or the reference frame) cropped with a span's box: ``(S, S, 3)`` uint8."""
    return crop_frames(to_uint8(image)[None], span.box, crop_size)[0]


class AppearanceCrops:
    """The appearance reference frame cropped with each span's box, once per span (its frames share the crop).

    Args:
        reference: ``(H, W, 3)`` uint8 reference frame (:func:`reference_frame`).
        crop_size: Side S of the crops.
    """

    def __init__(self, reference: np.ndarray, crop_size: int):
        self.reference, self.crop_size = reference, crop_size
        self._last: tuple[CropSpan, np.ndarray] | None = None

    def __call__(self, span: CropSpan) -> np.ndarray:
        """``(S, S, 3)`` uint8: the reference cropped with ``span``'s box."""
        if self._last is None or self._last[0] is not span:
            self._last = (span, crop_frame(self.reference, span, self.crop_size))
        return self._last[1]


def inpaint_mask(span: CropSpan, offset: int, options: MaskOptions, patches: ExposedPatches | None = None,
                 occluder: np.ndarray | None = None) -> np.ndarray:
    """The inpainting mask of one frame: its Mu (the span's, or its own where fast motion capped the span's union:
    ``CropSpan.mask_at``) with the exposed patches set to 0.

    Args:
        span: The frame's span.
        offset: The frame's position in it.
        options: Occluder grid and coverage.
        patches: Patches exposed in every frame (painted in the editor), crop coordinates.
        occluder: ``(H, W)`` float occluder mask of this frame in frame coordinates, or None.

    Returns:
        ``(S, S)`` float32, 1 = inpaint, 0 = keep the source pixels (the span's own Mu, not a copy, when no patch
        is exposed: treat it as read-only).
    """
    mask = span.mask_at(offset)  # the span's Mu is shared by its frames while nothing is exposed (paste weight reused)
    if patches is not None and patches.cells:
        mask = apply(mask, patches)
    if occluder is not None and not span.passthrough:
        exposed = occluder_cells(span, offset, options, occluder)
        if exposed.cells:
            mask = apply(mask, exposed)
    return mask


def occluder_cells(span: CropSpan, offset: int, options: MaskOptions, occluder: np.ndarray) -> ExposedPatches:
    """The patches an occluder mask ``(H, W)`` of one frame exposes (for the editor's display)."""
    grid = grid_size(span.crop_size, grid=options.occluder_grid)
    return from_occluder(occluder[None], single_frame_span(span, offset), grid, options.occluder_fraction)[0]


class ChunkArrays:
    """The arrays a chunk's inputs are written into, allocated once and reused for every chunk.

    A chunk of 52 frames at 512 pixels needs ~130 MB of crops, masks and appearance crops; allocating them afresh for
    every chunk makes the system map and zero new pages each time (measured: 3 ms a frame for the masks alone in
    ``bench/frame_stages.py``).

    Args:
        crop_size: Side S of the crops.
    """

    def __init__(self, crop_size: int):
        self.crop_size = crop_size
        self._arrays: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def __call__(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(crops (n, S, S, 3) uint8, masks (n, S, S) float32, appearance (n, S, S, 3) uint8)`` to fill; valid
        until the next call."""
        if self._arrays is None or len(self._arrays[0]) < n:
            s = self.crop_size
            self._arrays = (np.empty((n, s, s, 3), np.uint8), np.empty((n, s, s), np.float32),
                            np.empty((n, s, s, 3), np.uint8))
        return tuple(array[:n] for array in self._arrays)


ChunkInputs = Callable[[Chunk], "tuple[np.ndarray, np.ndarray, np.ndarray]"]  # chunk -> crops, masks, appearance


def generate_chunks(model: ChunkModel, num_frames: int, inputs: ChunkInputs, sampling: SamplingOptions,
                    clock: StageTimer, on_progress: ProgressCallback | None = None,
                    should_stop: StopCheck | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The one chunk loop: generate the clip chunk by chunk and yield its crops as soon as they are final.

    Consecutive chunks share the frames of two overlapping sampler windows; they are cross-faded.

    Args:
        model: The :class:`~stabledub_core.pipeline.chunk_model.ChunkModel` (after ``begin``).
        num_frames: Output frames of the clip.
        inputs: ``inputs(chunk) -> (crops, masks, appearance)`` of the chunk's frames (``(n, S, S, 3)`` uint8,
            ``(n, S, S)`` float32, ``(n, S, S, 3)`` uint8).
        sampling: Overlap and windows per chunk.
        clock: Stage timer.
        on_progress: Called as ``on_progress("sample", steps done, steps of all chunks)``.
        should_stop: Polled between chunks and sampler steps.

    Yields:
        ``(start, crops)``: generated crops ``(k, S, S, 3)`` uint8 of frames ``[start, start + k)``, in order.
    """
    chunks = plan_chunks(num_frames, sampling.windows_per_chunk, model.window, sampling.overlap)

    def generate(number: int, chunk: Chunk) -> np.ndarray:
        check_interrupt(should_stop)
        crops, masks, appearance = inputs(chunk)
        on_step = None if on_progress is None else (
            lambda done, total: on_progress("sample", number * total + done, len(chunks) * total))
        return model.generate(chunk.start, crops, masks, appearance, clock, should_stop, on_step=on_step)

    yield from stitch_images(chunks, generate)


class Compositor:
    """The one paste loop: generated crops back into their frames, frame by frame, into a sink.

    The paste weight (the mask resampled to the box) is prepared once and reused while consecutive frames share
    their box and mask, as the frames of a span without occluder exposure do.

    Args:
        plan: The clip's :class:`~stabledub_core.masks.crop_spans.CropPlan`.
        sink: Anything with ``write(image, time)``.
        total: Output frames of the clip (for progress).
        color_match: Match the generated region's colours to the source around the mask.
        times: ``(F_out,)`` frame times to write (variable frame rate), or None.
        clock: Stage timer (``composite``, ``encode``).
        on_progress: Called as ``on_progress("paste", frames written, total)``.
        should_stop: Polled per frame.
    """

    def __init__(self, plan: CropPlan, sink, total: int, color_match: bool = False, times: np.ndarray | None = None,
                 clock: StageTimer | None = None, on_progress: ProgressCallback | None = None,
                 should_stop: StopCheck | None = None):
        self.plan, self.sink, self.total, self.color_match, self.times = plan, sink, total, color_match, times
        self.clock = clock or StageTimer()
        self.on_progress, self.should_stop = on_progress, should_stop
        self.faceless = 0  # frames written unchanged because no face was tracked in them
        self._weight: tuple[tuple, np.ndarray, PasteWeight] | None = None

    def _paste_weight(self, box: tuple, mask: np.ndarray) -> PasteWeight:
        if self._weight is None or self._weight[0] != box or not (
                self._weight[1] is mask or np.array_equal(self._weight[1], mask)):
            self._weight = (box, mask, PasteWeight.prepare(mask, box[2] - box[0]))
        return self._weight[2]

    def write(self, start: int, images: Iterable[np.ndarray], crops, masks: Iterable[np.ndarray] | None) -> None:
        """Composite and write frames ``start, start + 1, ...``.

        Args:
            start: Output index of the first frame.
            images: Its source images ``(H, W, 3)`` uint8, in order.
            crops: Their generated crops ``(s, s, 3)`` of any size ``s`` (uint8, or float in [0, 1]).
            masks: Their blending masks ``(S, S)`` in crop coordinates, or None for each frame's Mu
                (``CropSpan.mask_at``).
        """
        masks = iter(masks) if masks is not None else None
        for i, (image, crop) in enumerate(zip(images, crops), start):
            span, offset = self.plan.span_at(i)
            mask = next(masks) if masks is not None else span.mask_at(offset)
            if span.active[offset]:
                with self.clock.stage("composite"):
                    image = paste_back(image[None], to_uint8(crop)[None], span.box,
                                       self._paste_weight(span.box, mask), color_match=self.color_match)[0]
            else:
                self.faceless += 1
            with self.clock.stage("encode"):
                self.sink.write(image, None if self.times is None else float(self.times[i]))
            if self.on_progress is not None:
                self.on_progress("paste", i + 1, self.total)
            check_interrupt(self.should_stop)
