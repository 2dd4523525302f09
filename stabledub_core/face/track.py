"""Face tracking over a video: MediaPipe Face Landmarker (VIDEO mode), face selection, fine search for small
faces, One-Euro smoothing and gap filling, as a stream or for a whole clip."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from stabledub_core.errors import EmptyMediaError, FrameFormatError, OptionError, TrackError
from stabledub_core.face.gaps import GapFiller, TrackEntry, TrackStatus
from stabledub_core.face.indices import NUM_LANDMARKS
from stabledub_core.face.landmarker import FaceCounter, LandmarkerMode, MediaPipeLandmarker, check_frame, check_model_path
from stabledub_core.face.search import FineSearch, FineSearchConfig
from stabledub_core.face.selection import FaceChoice, FaceSelection, FaceSelector, is_continuation, rank_from_left
from stabledub_core.face.smoothing import OneEuroConfig, OneEuroFilter
from stabledub_core.runtime import StageTimer

__all__ = ["FaceTrack", "FaceTracker", "TrackBuilder", "TrackerConfig", "TrackStatus"]


@dataclass
class FaceTrack:
    """Landmarks of one face over a run of frames.

    Args:
        landmarks: (F, 478, 2) float32 (x, y) pixels in the source frame; NaN where MISSING.
        status: (F,) uint8 ``TrackStatus`` values.
        frame_size: (H, W) of the source frames.
        start: index of the first frame in the video (non-zero for streamed chunks).
        times: (F,) float64 frame times in seconds, or None.
        choice: which of several faces the track follows (set by the tracker on a whole stream), or None.
    """

    landmarks: np.ndarray
    status: np.ndarray
    frame_size: tuple[int, int]
    start: int = 0
    times: np.ndarray | None = None
    choice: FaceChoice | None = None

    def __post_init__(self):
        self.landmarks = np.asarray(self.landmarks, np.float32)
        self.status = np.asarray(self.status, np.uint8)
        self.frame_size = (int(self.frame_size[0]), int(self.frame_size[1]))
        frames = len(self.status)
        if self.landmarks.shape != (frames, NUM_LANDMARKS, 2) or self.status.shape != (frames,):
            raise TrackError(f"FaceTrack needs landmarks (F, {NUM_LANDMARKS}, 2) and status (F,), got "
                             f"{self.landmarks.shape} and {self.status.shape}")
        if self.times is not None:
            self.times = np.asarray(self.times, np.float64)
            if self.times.shape != (frames,):
                raise TrackError(f"FaceTrack times must be (F,) = ({frames},), got {self.times.shape}")

    def __len__(self) -> int:
        return len(self.status)

    @property
    def valid(self) -> np.ndarray:
        """(F,) bool: frames with landmarks (DETECTED or INTERPOLATED)."""
        return self.status != TrackStatus.MISSING

    def __getitem__(self, frames: slice) -> "FaceTrack":
        """The track over a slice of its frames (step 1), e.g. ``track[16:32]``."""
        if not isinstance(frames, slice) or frames.step not in (None, 1):
            raise TypeError("FaceTrack supports slices with step 1 only, e.g. track[16:32]")
        first, _, _ = frames.indices(len(self))
        return FaceTrack(self.landmarks[frames], self.status[frames], self.frame_size, self.start + first,
                         None if self.times is None else self.times[frames])

    @classmethod
    def concatenate(cls, chunks: Sequence["FaceTrack"]) -> "FaceTrack":
        """Join consecutive chunks (as streamed by ``FaceTracker.feed``) into one track.

        Args:
            chunks: tracks of the same frame size, each starting where the previous one stops.

        Returns:
            One track starting at the first chunk's start.
        """
        builder = TrackBuilder(sum(len(c) for c in chunks))
        for chunk in chunks:
            builder.append(chunk)
        return builder.build()

    @classmethod
    def from_entries(cls, entries: Sequence[TrackEntry], frame_size: tuple[int, int]) -> "FaceTrack":
        """Build a track from consecutive finalised entries."""
        return cls(np.stack([e.landmarks for e in entries]), np.array([e.status for e in entries], np.uint8),
                   frame_size, entries[0].index, np.array([e.time for e in entries]))

    def save(self, path: str | Path) -> None:
        """Write the track to an ``.npz`` file (landmark cache)."""
        extra = {} if self.times is None else {"times": self.times}
        np.savez_compressed(path, landmarks=self.landmarks, status=self.status,
                            frame_size=np.array(self.frame_size), start=np.array(self.start), **extra)

    @classmethod
    def load(cls, path: str | Path) -> "FaceTrack":
        """Read a track written by ``save``."""
        with np.load(path) as data:
            return cls(data["landmarks"], data["status"], tuple(data["frame_size"]), int(data["start"]),
                       data["times"] if "times" in data else None)


class TrackBuilder:
    """Joins streamed ``FaceTrack`` chunks into one track without keeping the chunks.

    The arrays grow in place (capacity doubles, or starts at ``expected_frames``), so a two-hour video costs its
    landmarks once, not a list of per-frame chunks plus their concatenated copy.

    Args:
        expected_frames: frame count to reserve up front (e.g. the container's estimate); 0 if unknown.
    """

    def __init__(self, expected_frames: int = 0):
        self._capacity = max(int(expected_frames), 1)
        self._landmarks: np.ndarray | None = None  # (capacity, 478, 2)
        self._status: np.ndarray | None = None  # (capacity,)
        self._times: np.ndarray | None = None  # (capacity,) or None when a chunk had no times
        self._has_times = True
        self._first: FaceTrack | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _reserve(self, frames: int) -> None:
        if self._landmarks is not None and frames <= len(self._status):
            return
        capacity = max(frames, self._capacity if self._landmarks is None else 2 * len(self._status))
        landmarks = np.empty((capacity, NUM_LANDMARKS, 2), np.float32)
        status = np.empty(capacity, np.uint8)
        times = np.empty(capacity, np.float64)
        if self._landmarks is not None:
            landmarks[:self._count] = self._landmarks[:self._count]
            status[:self._count] = self._status[:self._count]
            times[:self._count] = self._times[:self._count]
        self._landmarks, self._status, self._times = landmarks, status, times

    def append(self, chunk: FaceTrack) -> None:
        """Add the next chunk; it must start where the previous one stopped and have the same frame size."""
        if self._first is None:
            self._first = chunk
        elif chunk.start != self._first.start + self._count or chunk.frame_size != self._first.frame_size:
            raise TrackError(f"track chunks are not consecutive: frames {self._first.start}.."
                             f"{self._first.start + self._count} {self._first.frame_size} then {chunk.start} "
                             f"{chunk.frame_size}")
        n = len(chunk)
        self._reserve(self._count + n)
        self._landmarks[self._count:self._count + n] = chunk.landmarks
        self._status[self._count:self._count + n] = chunk.status
        if chunk.times is None:
            self._has_times = False
        else:
            self._times[self._count:self._count + n] = chunk.times
        self._count += n

    def build(self) -> FaceTrack:
        """The joined track (views of the buffers when they are nearly full, else trimmed copies)."""
        if self._first is None:
            raise TrackError("no track chunks to concatenate")
        n = self._count
        if 4 * n < 3 * len(self._status):  # more than a quarter unused: do not keep the slack alive
            self._landmarks, self._status, self._times = (a[:n].copy() for a in
                                                          (self._landmarks, self._status, self._times))
        return FaceTrack(self._landmarks[:n], self._status[:n], self._first.frame_size, self._first.start,
                         self._times[:n] if self._has_times else None)


@dataclass
class TrackerConfig:
    """Configuration of ``FaceTracker``.

    Args:
        selection: which face to follow when there are several.
        face_index: face index from the left for ``FaceSelection.INDEX``.
        face_point: ``(x, y)`` pixels for ``FaceSelection.POINT``.
        initial_selection: first pick of ``FaceSelection.NEAREST`` (LARGEST or INDEX).
        max_jump: largest per-frame move of the tracked face, in face sizes. A face that jumps further (a false
            detection, e.g. in an upside-down frame, or another shot after a cut) is held back: it is accepted as a
            new track only if it persists until the old one is lost (``max_gap`` + 1 frames), else the frame counts
            as having no face. With ``max_gap = 0`` every pick is accepted at once.
        max_scale_change: largest per-frame size ratio of the tracked face (same handling as ``max_jump``).
        num_faces: most faces MediaPipe returns per frame (> 1 so that selection can choose).
        face_count_interval: MediaPipe's VIDEO mode re-runs its face detector on every frame where it tracks fewer
            faces than it was asked for, which in a one-face video costs about a third more per frame. So the
            full-frame pass starts by tracking one face, the bundled face detector counts the faces every this many
            frames (from the first), and the pass follows up to ``num_faces`` faces from the first count that finds
            more than one. 0 = always ask MediaPipe for ``num_faces`` faces.
        min_detection_confidence: MediaPipe face detector threshold.
        min_presence_confidence: MediaPipe face presence threshold.
        min_tracking_confidence: MediaPipe tracking threshold.
        max_gap: longest run of faceless frames that is interpolated; longer runs are MISSING.
        smoothing: One-Euro parameters, or None for raw landmarks.
        search: fine search for small faces.
    """

    selection: FaceSelection = FaceSelection.LARGEST
    face_index: int = 0
    face_point: tuple[float, float] | None = None
    initial_selection: FaceSelection = FaceSelection.LARGEST
    max_jump: float = 1.0
    max_scale_change: float = 1.5
    num_faces: int = 4
    face_count_interval: int = 8
    min_detection_confidence: float = 0.5
    min_presence_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    max_gap: int = 4
    smoothing: OneEuroConfig | None = field(default_factory=OneEuroConfig)
    search: FineSearchConfig = field(default_factory=FineSearchConfig)


class FaceTracker:
    """Tracks one face through a video with MediaPipe's Face Landmarker. A context manager: closes MediaPipe.

    Whole clips: ``track(frames, fps)``. Long videos: ``stream(pairs)`` yields finalised chunks lazily; or, by hand,
    ``feed(frame, time)`` per frame in order, each call returning the frames finalised so far as a ``FaceTrack``
    chunk (or None), then ``flush()`` at the end. A frame is held back at most ``lookahead`` frames (until a gap
    around it can be judged); keep that many frames buffered to pair them with their chunk.

    Per-stage wall time for benchmarks: ``tracker.timer.summary(num_frames)`` with the stages ``detect`` (full-frame
    VIDEO-mode pass), ``count`` (face counts, see ``TrackerConfig.face_count_interval``), ``zoom`` (crops around
    recent faces), ``tiles`` (tile pyramid) and ``smooth``.

    Args:
        model_path: path of MediaPipe's ``face_landmarker.task``, or a folder holding it.
        config: tracker configuration.
        **overrides: fields of ``TrackerConfig`` to override, e.g. ``selection=FaceSelection.NEAREST``.
    """

    def __init__(self, model_path: str | Path, config: TrackerConfig | None = None, **overrides):
        self.model_path = check_model_path(model_path)
        self.config = dataclasses.replace(config or TrackerConfig(), **overrides)
        if self.config.num_faces < 1:
            raise OptionError(f"num_faces must be >= 1, got {self.config.num_faces}")
        if self.config.face_count_interval < 0:
            raise OptionError(f"face_count_interval must be >= 0, got {self.config.face_count_interval}")
        for name in ("full_frame_interval", "tile_interval"):
            if getattr(self.config.search, name) < 1:
                raise OptionError(f"search.{name} must be >= 1 frame, got {getattr(self.config.search, name)}")
        self.selector = FaceSelector(self.config.selection, self.config.face_index, self.config.initial_selection,
                                     self.config.face_point)
        self.timer = StageTimer()
        self._video: MediaPipeLandmarker | None = None
        self._image: MediaPipeLandmarker | None = None
        self._fine: FineSearch | None = None  # the fine search of the current stream (follows a zoomed face)
        self._counter: FaceCounter | None = None
        self._smoother = OneEuroFilter(self.config.smoothing) if self.config.smoothing is not None else None
        self.reset()

    # -- MediaPipe objects -------------------------------------------------------------------------------------
    def _landmarker(self, mode: LandmarkerMode, num_faces: int | None = None) -> MediaPipeLandmarker:
        cfg = self.config
        return MediaPipeLandmarker(self.model_path, mode, num_faces or cfg.num_faces, cfg.min_detection_confidence,
                                   cfg.min_presence_confidence, cfg.min_tracking_confidence)

    @property
    def tracked_faces(self) -> int:
        """How many faces the full-frame pass currently asks MediaPipe for (see ``face_count_interval``)."""
        cfg = self.config
        return cfg.num_faces if self._multi or cfg.face_count_interval == 0 else 1

    def _count_faces(self, frame: np.ndarray) -> None:
        """Every ``face_count_interval`` frames while one face is tracked: switch to several if there are more."""
        cfg = self.config
        if self.tracked_faces == cfg.num_faces or self._index % cfg.face_count_interval:
            return
        with self.timer.stage("count"):
            if self._counter is None:
                self._counter = FaceCounter(self.model_path, cfg.min_detection_confidence)
            count = self._counter.count(frame)
            self.faces_seen = max(self.faces_seen, count)
            if count > 1:
                self._multi = True
                if self._video is not None:  # a new VIDEO-mode landmarker asked for num_faces faces
                    self._video.close()
                    self._video = None

    def _search(self) -> FineSearch:
        """The stream's fine search (created on first use, with an IMAGE-mode landmarker shared by all streams and
        a VIDEO-mode one of its own for following a zoomed face)."""
        if self._fine is None:
            if self._image is None:
                self._image = self._landmarker(LandmarkerMode.IMAGE)
            self._fine = FineSearch(self._image, self.config.search, video=self._landmarker(LandmarkerMode.VIDEO, 1))
        return self._fine

    def _close_fine(self) -> None:
        if self._fine is not None:
            self._fine.video.close()
            self._fine = None

    def close(self) -> None:
        """Close the MediaPipe landmarkers (idempotent; a later ``track`` or ``feed`` opens new ones)."""
        self._close_fine()
        for landmarker in (self._video, self._image, self._counter):
            if landmarker is not None:
                landmarker.close()
        self._video = self._image = self._counter = None

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- streaming ---------------------------------------------------------------------------------------------
    @property
    def lookahead(self) -> int:
        """Most frames ``feed`` holds back before returning them."""
        return self._gaps.lookahead

    def reset(self) -> None:
        """Start a new stream (a new video): frame indices restart at 0 and nothing is carried over."""
        if self._video is not None:
            self._video.close()  # VIDEO mode keeps state and needs increasing timestamps: start a fresh one
            self._video = None
        self._close_fine()  # so does the fine search's
        if self._smoother is not None:
            self._smoother.reset()
        self._gaps = GapFiller(self.config.max_gap)
        self._multi = False  # the face count found several faces: the full-frame pass follows num_faces
        self._index = 0
        self._last_time: float | None = None
        self._frame_size: tuple[int, int] | None = None
        self._previous: np.ndarray | None = None  # (478, 2) last tracked landmarks while the track is alive
        self._recent: np.ndarray | None = None  # (N, 478, 2) all faces of the last frame that had any
        self._misses = 0  # consecutive frames without the tracked face
        self._empty = 0  # consecutive frames without any face
        self._zoom_first = 0  # frames left that try the zoomed search before the full-frame pass
        self._tiles_wait = 0  # frames left before the tile pyramid may run again
        self._held: list[tuple[float, np.ndarray]] = []  # (time, raw landmarks) of a jumped face, frame by frame
        self.faces_seen = 0  # most faces seen in one frame of this stream
        self.choice: FaceChoice | None = None  # the face the stream's first track started on

    def _full_frame(self, frame: np.ndarray, timestamp_ms: int) -> np.ndarray:
        """Stage 1: the VIDEO-mode landmarker on the whole frame. Returns (N, 478, 2)."""
        if self._video is None:
            self._video = self._landmarker(LandmarkerMode.VIDEO, self.tracked_faces)
        return self._video.detect(frame, timestamp_ms)

    def _zoom(self, frame: np.ndarray, timestamp_ms: int) -> np.ndarray:
        """Stage 2: crops around the faces of a recent frame. Returns (N, 478, 2)."""
        return self._search().around(frame, self._recent, timestamp_ms)

    def _tiles(self, frame: np.ndarray, timestamp_ms: int) -> np.ndarray:
        """Stage 3: the tile pyramid over the whole frame. Returns (N, 478, 2)."""
        return self._search().tiles(frame)

    def _stages(self) -> list:
        """(name, stage) pairs to try on the next frame, in order."""
        stages = [("detect", self._full_frame)]
        if self.config.search.enabled:
            if self._recent is not None:
                stages.insert(0 if self._zoom_first > 0 else 1, ("zoom", self._zoom))
            if self._tiles_wait == 0:
                stages.append(("tiles", self._tiles))
        return stages

    def _continues(self, face: np.ndarray) -> bool:
        """Whether a face continues the live track (always True when there is none)."""
        cfg = self.config
        return self._previous is None or is_continuation(face, self._previous, cfg.max_jump, cfg.max_scale_change)

    def _find(self, frame: np.ndarray, timestamp_ms: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Find the tracked face in a frame.

        The stages run in turn until one yields a face that the selector picks and that continues the track. While
        the zoomed search carries the track (a face too small for the full-frame pass), it goes first, and the
        full-frame pass is retried only every ``search.full_frame_interval`` frames.

        Returns:
            (accepted, jumped): (478, 2) landmarks of the tracked face or None; and, when only a face that breaks
            the track's continuity was picked, its (478, 2) landmarks, else None.
        """
        accepted, jumped, found_by = None, None, None
        candidates = np.empty((0, NUM_LANDMARKS, 2), np.float32)
        self._count_faces(frame)
        self._tiles_wait = max(self._tiles_wait - 1, 0)
        for name, stage in self._stages():
            with self.timer.stage(name):
                found = stage(frame, timestamp_ms)  # (N, 478, 2)
            if name == "tiles" and not len(found):
                self._tiles_wait = self.config.search.tile_interval
            if len(found):
                candidates = found
                self.faces_seen = max(self.faces_seen, len(found))
            choice = self.selector.select(found, self._previous)
            if choice is not None and self._continues(found[choice]):
                accepted, found_by = found[choice], name
                if self.choice is None:
                    centre = found[choice].mean(axis=0)
                    self.choice = FaceChoice(len(found), rank_from_left(found, choice), self._index,
                                             (int(round(centre[0])), int(round(centre[1]))))
                break
            if choice is not None and jumped is None:
                jumped = found[choice]
        if found_by == "detect":
            self._zoom_first = 0
        elif found_by is not None and self._zoom_first == 0:  # the full-frame pass went first and failed
            self._zoom_first = self.config.search.full_frame_interval - 1
        else:
            self._zoom_first = max(self._zoom_first - 1, 0)
        self._empty = 0 if len(candidates) else self._empty + 1
        if len(candidates):
            self._recent = candidates
        elif self._empty > self.config.max_gap:
            self._recent = None
        return accepted, None if accepted is not None else jumped

    def _smooth(self, landmarks: np.ndarray, time: float) -> np.ndarray:
        if self._smoother is None:
            return landmarks
        with self.timer.stage("smooth"):
            return self._smoother(landmarks, time)

    def _hold(self, jumped: np.ndarray | None, time: float) -> list[TrackEntry] | None:
        """Keep a jumped face while it persists; once the old track is lost, start the new track with it.

        Returns:
            The held-back frames finalised (the new track's first frames) when the new track starts, else None.
        """
        if jumped is None or (self._held and not is_continuation(jumped, self._held[-1][1], self.config.max_jump,
                                                                 self.config.max_scale_change)):
            self._held = []
        if jumped is not None:
            self._held.append((time, jumped))
        if not self._held or self._misses + 1 <= self.config.max_gap:
            return None
        if self._smoother is not None:
            self._smoother.reset()
        smoothed = [self._smooth(landmarks, t) for t, landmarks in self._held]
        self._held = []
        return self._gaps.resolve(smoothed[:-1]) + self._gaps.push(self._index, time, smoothed[-1])

    def feed(self, frame: np.ndarray, time: float) -> FaceTrack | None:
        """Track the next frame of the stream.

        Args:
            frame: (H, W, 3) uint8 RGB; every frame of a stream has the same size.
            time: the frame's time in seconds, increasing.

        Returns:
            The frames finalised by this call as a chunk (``chunk.start`` = index of its first frame), or None.
        """
        frame = check_frame(frame)
        if self._frame_size is None:
            self._frame_size = frame.shape[:2]
        elif frame.shape[:2] != self._frame_size:
            raise FrameFormatError(f"frame {self._index} is {frame.shape[:2]} but the stream started with "
                                   f"{self._frame_size}: call reset() before a new video")
        if self._last_time is not None and time <= self._last_time:
            raise TrackError(f"frame times must increase: frame {self._index} at {time} s after {self._last_time} s")
        landmarks, jumped = self._find(frame, int(round(time * 1000.0)))
        entries = None if landmarks is not None or self._previous is None else self._hold(jumped, time)
        if entries is not None:  # a jumped face persisted: it is the new track
            self._previous, self._misses = entries[-1].landmarks, 0
        elif landmarks is not None:
            landmarks = self._smooth(landmarks, time)
            self._previous, self._misses, self._held = landmarks, 0, []
            entries = self._gaps.push(self._index, time, landmarks)
        else:
            self._misses += 1
            if self._misses > self.config.max_gap:  # the track is lost: start afresh when a face comes back
                self._previous = None
                if self._smoother is not None:
                    self._smoother.reset()
            entries = self._gaps.push(self._index, time, None)
        self._index += 1
        self._last_time = time
        return FaceTrack.from_entries(entries, self._frame_size) if entries else None

    def flush(self) -> FaceTrack | None:
        """End the stream: return the frames still held back (as MISSING when no face follows them)."""
        entries = self._gaps.flush()
        return FaceTrack.from_entries(entries, self._frame_size) if entries else None

    def stream(self, frames: Iterable[tuple[np.ndarray, float]]) -> Iterator[FaceTrack]:
        """Track a new stream lazily: yields finalised chunks while reading (frame, time) pairs.

        Args:
            frames: (frame (H, W, 3) uint8 RGB, time in seconds) pairs in order, e.g. from a video reader.

        Yields:
            Consecutive ``FaceTrack`` chunks covering every frame; frame i's chunk comes at most ``lookahead``
            frames after frame i was read.
        """
        self.reset()
        for frame, time in frames:
            chunk = self.feed(frame, time)
            if chunk is not None:
                yield chunk
        if self._index == 0:
            raise EmptyMediaError("no frames to track")
        last = self.flush()
        if last is not None:
            yield last

    # -- whole clips -------------------------------------------------------------------------------------------
    def track(self, frames: Iterable[np.ndarray], fps: float | None = None,
              times: Sequence[float] | None = None) -> FaceTrack:
        """Track a whole clip (a new stream).

        Args:
            frames: (H, W, 3) uint8 RGB frames, e.g. an (F, H, W, 3) array or a generator.
            fps: constant frame rate; frame i is at i / fps seconds.
            times: per-frame times in seconds instead of ``fps`` (variable frame rate).

        Returns:
            The face track of all frames.
        """
        if (fps is None) == (times is None):
            raise OptionError("give either fps (constant frame rate) or times (seconds per frame), not both or none")
        if fps is not None and not fps > 0:
            raise OptionError(f"fps must be > 0, got {fps}")

        def timed() -> Iterator[tuple[np.ndarray, float]]:
            for i, frame in enumerate(frames):
                if times is not None and i >= len(times):
                    raise TrackError(f"more frames than times ({len(times)})")
                yield frame, (i / fps if fps is not None else float(times[i]))

        builder = TrackBuilder()
        for chunk in self.stream(timed()):
            builder.append(chunk)
        return builder.build()
