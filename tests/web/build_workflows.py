"""Build the shipped workflows in the real front end: ``workflows/<name>.json`` (UI format, the templates),
``workflows/api/<name>_api.json`` (the API prompt the front end makes of it) and ``workflows/<name>.jpg`` (the
template's thumbnail: ComfyUI v0.3.64 serves ``/api/workflow_templates/<pack folder>/<name>.jpg``).

Each workflow is made by the front end itself from the specification below (nodes created with their widget values,
links by slot name, nodes stacked in columns by their real sizes), so its format, widget order and layout are those of
the ComfyUI version it runs in. Run from the repository root with a Python that has ComfyUI's requirements and
Selenium::

    COMFYUI_DIR=/path/to/ComfyUI python tests/web/build_workflows.py

``tests/web/test_browser.py`` loads every workflow again and checks it; ``tests/nodes/test_comfyui.py`` runs them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]

from browser_tools import APP, graph_box, load, open_front_end, overlaps, prompt, schema_alert, screenshot, \
    serialized, start_browser, view, write_settings  # noqa: E402
from helpers.comfy_stub import DEMO_CHECKPOINT, REPO, ComfyServer, install_base  # noqa: E402

WORKFLOWS = REPO / "workflows"
VIDEO, SECOND_VIDEO, SPEECH = "face_occluded.mp4", "face_pan.mp4", "speech_es.wav"
FACE = {"face_model": "face_landmarker.task"}
FIXED = {"control_after_generate": "fixed"}  # the seed stays as saved: the same run every time
THUMBNAIL_WIDTH = 640

COMMON = {
    "model": ("StableDubLoadModel", {"ckpt_name": DEMO_CHECKPOINT}),
    "video": ("StableDubLoadVideo", {"video": VIDEO}),
    "speech": ("LoadAudio", {"audio": SPEECH}),
}
# The modular chain up to the crops: fit the frames to the speech, track, plan, crop, lip-habit segment.
MODULAR = {
    **COMMON,
    "fit": ("StableDubFitLength", {}),
    "track": ("StableDubTrackFaces", FACE),
    "plan": ("StableDubPlanMasks", {}),
    "crop": ("StableDubCropFaces", FIXED),
    "lips": ("StableDubLipCrops", FIXED),
    "sample": ("StableDubSample", FIXED),
    "paste": ("StableDubPasteBack", {}),
}
MODULAR_LINKS = [
    ("video", "images", "fit", "images"), ("speech", "AUDIO", "fit", "audio"), ("video", "fps", "fit", "fps"),
    ("fit", "images", "track", "images"), ("video", "fps", "track", "fps"),
    ("model", "model", "plan", "model"), ("track", "track", "plan", "track"),
    ("fit", "images", "crop", "images"), ("track", "track", "crop", "track"),
    ("plan", "crop_plan", "crop", "crop_plan"),
    ("model", "model", "lips", "model"), ("fit", "images", "lips", "images"), ("track", "track", "lips", "track"),
    ("model", "model", "sample", "model"), ("crop", "crops", "sample", "crops"),
    ("crop", "appearance", "sample", "appearance"), ("lips", "lip_crops", "sample", "lip_crops"),
    ("fit", "audio", "sample", "audio"), ("video", "fps", "sample", "fps"),
    ("fit", "images", "paste", "images"), ("plan", "crop_plan", "paste", "crop_plan"),
    ("paste", "images", "save", "images"), ("fit", "audio", "save", "audio"), ("video", "fps", "save", "fps"),
]

SPECS = {
    "stabledub_dub": {
        "nodes": {**COMMON, "dub": ("StableDubDub", {**FACE, **FIXED}),
                  "save": ("StableDubSaveVideo", {"filename_prefix": "StableDub/dub"})},
        "links": [("model", "model", "dub", "model"), ("video", "images", "dub", "images"),
                  ("speech", "AUDIO", "dub", "audio"), ("video", "fps", "dub", "fps"),
                  ("dub", "images", "save", "images"), ("dub", "audio", "save", "audio"),
                  ("dub", "fps", "save", "fps")],
        "columns": [["model", "video", "speech"], ["dub"], ["save"]],
    },
    # The editor's patches and an occluder MASK (here a rectangle over the microphone, from core mask nodes; any
    # segmentation node fits) keep what covers the mouth.
    "stabledub_occlusion": {
        "nodes": {**MODULAR,
                  "blank": ("SolidMask", {"value": 0.0, "width": 512, "height": 512}),
                  "patch": ("SolidMask", {"value": 1.0, "width": 64, "height": 72}),
                  "occluder": ("MaskComposite", {"x": 208, "y": 128, "operation": "add"}),
                  "expose": ("StableDubOccluderExposure", {}),
                  "save": ("StableDubSaveVideo", {"filename_prefix": "StableDub/occlusion"})},
        "links": MODULAR_LINKS + [
            ("blank", "MASK", "occluder", "destination"), ("patch", "MASK", "occluder", "source"),
            ("plan", "crop_plan", "expose", "crop_plan"), ("fit", "images", "expose", "images"),
            ("occluder", "MASK", "expose", "occluder"),
            ("expose", "masks", "sample", "masks"), ("expose", "masks", "paste", "masks"),
            ("sample", "crops", "paste", "crops")],
        "columns": [["model", "video", "speech"], ["fit", "track", "blank", "patch"], ["plan", "occluder", "lips"],
                    ["expose", "crop"], ["sample"], ["paste", "save"]],
    },
    # The generated crops upscaled by a core node before they are pasted back (any restore/upscale node fits);
    # the mask preview shows Mu and the crop boxes. The speech is encoded once (Audio Encode) for the sampler.
    "stabledub_upscale": {
        "nodes": {**MODULAR,
                  "audio": ("StableDubAudioEncode", {}),
                  "upscale": ("ImageScale", {"upscale_method": "lanczos", "width": 512, "height": 512}),
                  "masks_preview": ("StableDubPreview", {}),
                  "show": ("PreviewImage", {}),
                  "save": ("StableDubSaveVideo", {"filename_prefix": "StableDub/upscale"})},
        "links": [link for link in MODULAR_LINKS if link != ("fit", "audio", "sample", "audio")] + [
            ("model", "model", "audio", "model"), ("fit", "audio", "audio", "audio"),
            ("fit", "images", "audio", "images"), ("video", "fps", "audio", "fps"),
            ("audio", "audio_features", "sample", "audio_features"),
            ("plan", "union_masks", "sample", "masks"), ("sample", "crops", "upscale", "image"),
            ("upscale", "IMAGE", "paste", "crops"),
            ("fit", "images", "masks_preview", "images"), ("plan", "crop_plan", "masks_preview", "crop_plan"),
            ("masks_preview", "preview", "show", "images")],
        "columns": [["model", "video", "speech"], ["fit", "track"], ["plan", "lips", "masks_preview"],
                    ["crop", "audio", "show"], ["sample"], ["upscale", "paste", "save"]],
    },
    # A long video dubbed file to file, a chunk at a time (bounded memory, however long the video).
    "stabledub_long_video": {
        "nodes": {"model": COMMON["model"], "speech": COMMON["speech"],
                  "dub": ("StableDubDubVideoFile", {"video": VIDEO, **FACE, **FIXED,
                                                    "filename_prefix": "StableDub/long_video"})},
        "links": [("model", "model", "dub", "model"), ("speech", "AUDIO", "dub", "audio")],
        "columns": [["model", "speech"], ["dub"]],
    },
    # The lip habit encoded once from a second video (the same speaker elsewhere, or another speaker), saved to
    # models/stabledub_habits for StableDub Load Habit, and used by the sampler instead of the dubbed video's lips.
    "stabledub_habit_transfer": {
        "nodes": {**{k: v for k, v in MODULAR.items()},
                  "other_video": ("StableDubLoadVideo", {"video": SECOND_VIDEO}),
                  "other_track": ("StableDubTrackFaces", FACE),
                  "habit": ("StableDubHabitEncode", {}),
                  "keep": ("StableDubSaveHabit", {"name": "second_video"}),
                  "save": ("StableDubSaveVideo", {"filename_prefix": "StableDub/habit_transfer"})},
        "links": [link for link in MODULAR_LINKS if "lips" not in (link[0], link[2])] + [
            ("other_video", "images", "other_track", "images"), ("other_video", "fps", "other_track", "fps"),
            ("model", "model", "lips", "model"), ("other_video", "images", "lips", "images"),
            ("other_track", "track", "lips", "track"), ("model", "model", "habit", "model"),
            ("lips", "lip_crops", "habit", "lip_crops"), ("habit", "habit", "keep", "habit"),
            ("habit", "habit", "sample", "habit"), ("plan", "union_masks", "sample", "masks"),
            ("sample", "crops", "paste", "crops")],
        "columns": [["model", "video", "speech"], ["fit", "other_video"], ["track", "other_track"],
                    ["plan", "lips"], ["crop", "habit", "keep"], ["sample"], ["paste", "save"]],
    },
}

BUILD = """
const [spec, done] = [arguments[0], arguments[arguments.length - 1]];
(async () => {
    const app = window.comfyAPI.app.app;
    app.graph.clear();
    const made = {};
    for (const [key, type, widgets] of spec.nodes) {  // in the specification's order: node ids 1, 2, ...
        const node = LiteGraph.createNode(type);
        if (!node) throw new Error(`unknown node type ${type}`);
        app.graph.add(node);
        for (const [name, value] of Object.entries(widgets)) {
            const w = node.widgets?.find((w) => w.name === name);
            if (!w) throw new Error(`${type} has no widget ${name}`);
            w.value = value;
            w.callback?.(value);  // as a user's choice: e.g. the video preview loads the file
        }
        made[key] = node;
    }
    for (const [from, output, to, input] of spec.links) {
        const [a, b] = [made[from], made[to]];
        const o = a.findOutputSlot(output), i = b.findInputSlot(input);
        if (o < 0 || i < 0) throw new Error(`no slot ${from}.${output} -> ${to}.${input}`);
        if (!a.connect(o, b, i)) throw new Error(`could not link ${from}.${output} -> ${to}.${input}`);
    }
    return Object.fromEntries(Object.entries(made).map(([key, node]) => [key, node.id]));
})().then(done, (e) => done(String(e)));
"""
# Nodes stacked in columns by their sizes once the front end has drawn them (video previews grow their node).
LAYOUT = """
const [spec, ids, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
(async () => {
    const app = window.comfyAPI.app.app;
    const made = Object.fromEntries(Object.entries(ids).map(([key, id]) => [key, app.graph.getNodeById(id)]));
    const title = LiteGraph.NODE_TITLE_HEIGHT, gap = 40;
    let x = 40;
    for (const column of spec.columns) {
        let y = 40 + title, width = 0;
        for (const key of column) {
            const node = made[key];
            const min = node.computeSize();
            // A video list's preview grows its node to show the (square) video at the node's width once it has
            // loaded (its widgets and slots take about 150 more pixels); room for it is kept, so nothing overlaps
            // whenever it loads.
            const preview = node.widgets?.some((w) => w.name === "video-preview") ? 150 + node.size[0] : 0;
            node.setSize([Math.max(node.size[0], min[0], 320), Math.max(node.size[1], min[1], preview)]);
            node.pos = [x, y];
            y += node.size[1] + title + gap;
            width = Math.max(width, node.size[0]);
        }
        x += width + gap;
    }
    app.graph.setDirtyCanvas(true, true);
    return null;
})().then(done, (e) => done(String(e)));
"""


def main() -> None:
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        sys.exit("set COMFYUI_DIR to a ComfyUI checkout")
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.repo_media import build_media

    with tempfile.TemporaryDirectory() as tmp:
        media = build_media(Path(tmp) / "media")
        base = install_base(Path(tmp) / "base", {n: media / n for n in (VIDEO, SECOND_VIDEO, SPEECH)})
        write_settings(base)
        (WORKFLOWS / "api").mkdir(exist_ok=True)
        with ComfyServer(comfy_dir, base).running() as server:
            driver = start_browser((2400, 1300))
            try:
                open_front_end(driver, server.url, "StableDubDub")
                for name, spec in SPECS.items():
                    ordered = {**spec, "nodes": [[key, *spec["nodes"][key]] for column in spec["columns"]
                                                 for key in column]}  # Selenium sends objects with sorted keys
                    ids = driver.execute_async_script(BUILD, ordered)
                    assert isinstance(ids, dict), f"{name}: {ids}"
                    # Opened as a user opens it (video previews load and size their nodes), then laid out.
                    load(driver, serialized(driver), name)
                    sizes = None
                    for _ in range(6):  # until the video previews have loaded and sized their nodes
                        view(driver, graph_box(driver))
                        time.sleep(2)
                        error = driver.execute_async_script(LAYOUT, ordered, ids)
                        assert error is None, f"{name}: {error}"
                        now = driver.execute_script(f"return {APP}.graph.nodes.map((n) => [...n.size]);")
                        if now == sizes:
                            break
                        sizes = now
                    assert len(ordered["nodes"]) == len(spec["nodes"]), f"{name}: a node is in no column"
                    assert not overlaps(driver), name
                    assert not schema_alert(driver), f"{name}: {schema_alert(driver)}"  # taken as it is
                    workflow = serialized(driver)
                    workflow.pop("id", None)  # a fresh id each time the template is opened
                    workflow.get("extra", {}).pop("ds", None)  # the viewer's scroll and zoom
                    (WORKFLOWS / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n")
                    api = prompt(driver)
                    (WORKFLOWS / "api" / f"{name}_api.json").write_text(json.dumps(api, indent=2) + "\n")
                    box = graph_box(driver)
                    view(driver, box)
                    screenshot(driver, box, WORKFLOWS / f"{name}.jpg", width=THUMBNAIL_WIDTH, quality=85)
                    print(f"{name}: {len(workflow['nodes'])} nodes, {len(workflow['links'])} links")
            finally:
                driver.quit()


if __name__ == "__main__":
    main()
