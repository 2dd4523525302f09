"""The synthetic world: talking avatars with known ground truth (design: DESIGN.md, "The synthetic world").

Avatars are made from the bundled astronaut photo (``photo``), varied from a seed (``avatar``: face shape, skin,
hair, background, lighting; ``motion``: smooth head motion), with the mouth re-drawn by a parametric model
(``mouth``) whose state the speech drives through a fixed, documented function (``speech_drive``), personalised by a
per-avatar lip habit (``habit``). Occluders (``occluders``) cover part of the mouth in a share of clips. ``render``
draws the frames, ``world`` writes clips (video with sound + metadata JSON + occluder masks) that ``train
preprocess`` consumes unchanged, and ``estimator`` reads the mouth state back from any frame.
"""

from stabledub_core.synthetic.avatar import Avatar, AvatarParams, build_avatar, sample_avatar
from stabledub_core.synthetic.estimator import MouthEstimate, estimate_clip, estimate_frame
from stabledub_core.synthetic.habit import ARCHETYPES, LipHabit, archetype_habit, mean_habit, sample_habit
from stabledub_core.synthetic.mouth import MouthPalette, MouthStates
from stabledub_core.synthetic.occluders import OccluderSpec, sample_occluder
from stabledub_core.synthetic.render import RenderedClip, render_clip
from stabledub_core.synthetic.speech_drive import speech_features, speech_mouth_states
from stabledub_core.synthetic.world import (
    WorldClip,
    dub_ground_truth,
    load_metadata,
    load_occluder_masks,
    render_speech,
    write_world,
    write_world_clip,
)

__all__ = ["ARCHETYPES", "Avatar", "AvatarParams", "LipHabit", "MouthEstimate", "MouthPalette", "MouthStates",
           "OccluderSpec", "RenderedClip", "WorldClip", "archetype_habit", "build_avatar", "dub_ground_truth",
           "estimate_clip", "estimate_frame", "load_metadata", "load_occluder_masks", "mean_habit", "render_clip",
           "render_speech", "sample_avatar", "sample_habit", "sample_occluder", "speech_features",
           "speech_mouth_states", "write_world", "write_world_clip"]
