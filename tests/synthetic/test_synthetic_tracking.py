"""MediaPipe's face landmarker finds the avatars' faces in every frame and sees their mouths move."""

from __future__ import annotations

import dataclasses

import numpy as np

from stabledub_core.face.indices import MOUTH_CORNERS
from stabledub_core.face.landmarker import FaceCounter, LandmarkerMode, MediaPipeLandmarker
from stabledub_core.synthetic.avatar import sample_avatar
from stabledub_core.synthetic.occluders import KINDS, sample_occluder
from stabledub_core.synthetic.world import render_speech

SEEDS = range(100, 106)
SECONDS = 0.8  # 20 frames at 25 fps


def test_every_frame_has_exactly_one_tracked_face_where_the_world_drew_it(speech, face_model_path):
    waveform, rate = speech
    gaps, truth, found = [], [], 0
    with FaceCounter(face_model_path) as counter:
        for i, seed in enumerate(SEEDS):
            avatar = sample_avatar(seed)
            occluder = None
            if i % 2:  # every other avatar holds an occluder the whole time
                spec = sample_occluder(np.random.default_rng(seed), SECONDS, avatar.skin, KINDS[i // 2 % 3])
                occluder = dataclasses.replace(spec, start_s=0.0, end_s=SECONDS)
            # Different parts of the speech per avatar, so the mouths differ.
            start = int(0.5 * i * rate)
            clip = render_speech(avatar, waveform[:, start:], rate, 25, occluder, max_seconds=SECONDS)
            with MediaPipeLandmarker(face_model_path, LandmarkerMode.VIDEO, num_faces=1) as landmarker:
                for k, frame in enumerate(clip.frames):
                    faces = landmarker.detect(frame, 40 * k)
                    assert len(faces) == 1, (seed, k)
                    assert counter.count(frame) == 1, (seed, k)
                    found += 1
                    x, y, hw, _ = clip.rendered.mouth_poses[k]
                    centre = faces[0][MOUTH_CORNERS].mean(0)
                    assert abs(centre[0] - x) < 0.35 * hw and abs(centre[1] - y) < 0.6 * hw, (seed, k)
                    if occluder is None:
                        gaps.append(np.linalg.norm(faces[0][14] - faces[0][13]) / hw)  # inner lips apart
                        truth.append(clip.states.opening[k])
    assert found == len(SEEDS) * 20
    assert np.corrcoef(gaps, truth)[0, 1] > 0.7  # the landmarker sees the drawn mouth open and close
