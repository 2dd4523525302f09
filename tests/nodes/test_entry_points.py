"""One pipeline: the CLI's library entry point, the all-in-one Dub node and the modular node graph
(Track -> Plan Masks -> Occluder Exposure -> Crop -> Lip Crops -> Sample -> Paste Back) dub the same clip with the same
options and seed into the same frames."""

from __future__ import annotations

import av
import cv2
import numpy as np
import pytest
import torch

from helpers.comfy_stub import micro_config, run_node
from helpers.media_factory import tone, write_video, write_wav
from stabledub_core.media.clip import read_clip, write_clip
from stabledub_core.media.audio import load_audio, load_encoder_input
from stabledub_core.media.frames import FrameSink
from stabledub_core.media.video import VideoReader
from stabledub_core.models.checkpoint import load_checkpoint, save_checkpoint
from stabledub_core.models.stabledub import StableDub
from stabledub_core.pipeline.dub import dub_stream, dub_video
from stabledub_core.pipeline.options import DubOptions

FRAMES, SIZE, FPS = 20, 192, 25
CHECKPOINT = "micro.safetensors"
FACE_MODEL = "face_landmarker.task"
# One set of options, spelled as the nodes' widgets and the Python API name them.
VALUES = dict(steps=2, scheduler="ddim", audio_scale=2.0, habit_scale=1.5, seed=7, overlap=4, windows_per_chunk=1,
              reference="closed_lips", habit_frames=6, mask_margin=0.08, occluder_grid=16, occluder_fraction=0.2)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, media_dir, comfy, face_model_path):
    """A 20-frame face clip, its 16 kHz speech of exactly the clip's length, an occluder and a micro checkpoint."""
    folder = tmp_path_factory.mktemp("entry")
    with av.open(str(media_dir / "face_pan.mp4")) as c:
        frames = [cv2.resize(f.to_ndarray(format="rgb24"), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
                  for _, f in zip(range(FRAMES), c.decode(video=0))]
    video = write_video(folder / "clip.mp4", FRAMES, fps=FPS, size=(SIZE, SIZE), frames=frames)
    speech = write_wav(folder / "speech.wav", tone(FRAMES / FPS, 16000, freq=180.0), 16000)
    occluder = np.zeros((SIZE, SIZE), np.uint8)
    occluder[100:140, 60:96] = 255  # a hand over the left part of the mouth
    occluder_png = folder / "occluder.png"
    cv2.imwrite(str(occluder_png), occluder)
    torch.manual_seed(0)
    model = StableDub.from_config(micro_config())
    with torch.no_grad():  # the zero-initialised layers (habit output conv, temporal Mamba out_proj) made random:
        for parameter in model.parameters():  # every condition then changes the output
            if not parameter.any():
                parameter.normal_(0, 0.05)
    checkpoint = comfy.root / "models" / "stabledub" / CHECKPOINT
    save_checkpoint(model, checkpoint)
    (comfy.root / "models" / "mediapipe" / FACE_MODEL).symlink_to(face_model_path)
    return {"video": video, "speech": speech, "occluder": occluder_png, "checkpoint": checkpoint,
            "mask": torch.from_numpy(occluder.astype(np.float32) / 255)[None], "face_model": face_model_path}


def options(clip) -> DubOptions:
    return DubOptions.from_values(face_model=clip["face_model"], length_policy="trim", x264_preset="ultrafast",
                                  **VALUES)


def decoded(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def node_inputs(clip, comfy):
    loaded = read_clip(clip["video"])
    waveform, rate = load_audio(clip["speech"])
    (model,) = run_node(comfy, "StableDubLoadModel", ckpt_name=CHECKPOINT, dtype="auto",
                        vae_name="(in checkpoint)", wav2vec2="(not needed)")
    return {"model": model, "images": torch.from_numpy(loaded.frames).float() / 255, "fps": float(loaded.fps),
            "audio": {"waveform": torch.from_numpy(waveform)[None], "sample_rate": rate}}


@pytest.fixture(scope="module")
def dub_node_frames(comfy, clip, node_inputs):
    images, _, _ = run_node(comfy, "StableDubDub", face_model=FACE_MODEL, length_policy="trim",
                            occluder=clip["mask"], **node_inputs, **VALUES)
    return images


@pytest.fixture(scope="module")
def modular_frames(comfy, clip, node_inputs):
    model, images, audio, fps = (node_inputs[k] for k in ("model", "images", "audio", "fps"))
    (track,) = run_node(comfy, "StableDubTrackFaces", images=images, fps=fps, face_model=FACE_MODEL)
    plan, _ = run_node(comfy, "StableDubPlanMasks", model=model, track=track, mask_margin=VALUES["mask_margin"])
    (masks,) = run_node(comfy, "StableDubOccluderExposure", crop_plan=plan, images=images,
                        patches='{"grid": 16, "cells": []}', occluder_grid=VALUES["occluder_grid"],
                        occluder_fraction=VALUES["occluder_fraction"], preview_frame=0, occluder=clip["mask"])
    crops, appearance = run_node(comfy, "StableDubCropFaces", images=images, track=track, crop_plan=plan,
                                 reference=VALUES["reference"], seed=VALUES["seed"])
    (lips,) = run_node(comfy, "StableDubLipCrops", model=model, images=images, track=track,
                       habit_frames=VALUES["habit_frames"], seed=VALUES["seed"])
    sampling = {k: VALUES[k] for k in ("steps", "scheduler", "audio_scale", "habit_scale", "seed", "overlap",
                                       "windows_per_chunk")}
    (generated,) = run_node(comfy, "StableDubSample", model=model, crops=crops, masks=masks, appearance=appearance,
                            lip_crops=lips, audio=audio, fps=fps, **sampling)
    (pasted,) = run_node(comfy, "StableDubPasteBack", images=images, crops=generated, crop_plan=plan,
                         color_match=False, masks=masks)
    return pasted


def test_dub_node_and_modular_graph_give_the_same_frames(dub_node_frames, modular_frames, node_inputs):
    assert dub_node_frames.shape == modular_frames.shape == node_inputs["images"].shape
    assert torch.equal(dub_node_frames, modular_frames)
    changed = (dub_node_frames != node_inputs["images"]).any(dim=-1)  # (F, H, W)
    assert changed.any(dim=(1, 2)).all()  # every frame was dubbed (not a pass-through that equals trivially)


def test_cli_entry_point_gives_the_same_frames(clip, dub_node_frames, tmp_path):
    model = load_checkpoint(clip["checkpoint"])
    # The CLI's streaming path from the file, into memory: exactly the node's frames.
    wave16, info = load_encoder_input(clip["speech"])
    with VideoReader(clip["video"]) as reader:
        result = dub_stream(reader, wave16, info.num_samples, info.sample_rate, model, options(clip),
                            lambda plan, _: FrameSink(plan.num_frames, reader.size),
                            occluder=cv2.imread(str(clip["occluder"]), cv2.IMREAD_GRAYSCALE) / 255.0)
    node = (dub_node_frames.numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(result.sink.result(), node)
    # dub_video itself (what `python -m stabledub_core dub` calls) writes the same frames as the node's, encoded alike.
    cli_file, node_file = tmp_path / "cli.mp4", tmp_path / "node.mp4"
    dub_video(clip["video"], clip["speech"], model, cli_file, options(clip), occluder_mask=clip["occluder"])
    write_clip(node_file, node, FPS, crf=options(clip).output.crf, preset=options(clip).output.x264_preset)
    np.testing.assert_array_equal(decoded(cli_file), decoded(node_file))
