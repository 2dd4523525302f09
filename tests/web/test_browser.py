"""The exposure editor in the real front end: a real ComfyUI server (``COMFYUI_DIR``) with the pack, headless
Chromium driven by Selenium.

Skipped unless ``COMFYUI_DIR`` points at a ComfyUI checkout (run with a Python that has its requirements), Selenium is
installed and Debian's ``chromium`` and ``chromium-driver`` are (or ``CHROMIUM`` / ``CHROMEDRIVER`` name them). The
browser resolves no host but 127.0.0.1 (the front end's calls to outside services fail at once).

The test loads the occlusion workflow as a user opens it, checks that the extension loads with no console error,
presses Preview crop (the exposure node alone: tracking and planning), clicks patches on the picture, and finds the
patch list in the saved workflow and in the API prompt; the workflow loaded again shows the picture without running.
With ``STABLEDUB_DOCS_SCREENSHOT=1`` the editor's screenshot is also written to docs/exposure_editor.png.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from browser_tools import (APP, CHROMEDRIVER, CHROMIUM, console_errors, graph_box, load, open_front_end, overlaps,
                           prompt, schema_alert, screenshot, serialized, start_browser, wait_for,
                           write_settings)
from helpers.comfy_stub import REPO, ComfyServer, install_base

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
EMPTY = {"last_node_id": 0, "last_link_id": 0, "nodes": [], "links": [], "groups": [], "config": {}, "extra": {},
         "version": 0.4}  # an empty workflow, complete as the front end's schema wants it
if COMFYUI_DIR:
    pytest.importorskip("selenium.webdriver", reason="Selenium is not installed")
pytestmark = [
    pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run"),
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver are not installed"),
]
NODE = "StableDubOccluderExposure"
DOCS_SCREENSHOT = REPO / "docs" / "exposure_editor.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory, media_dir):
    base = install_base(tmp_path_factory.mktemp("comfyui_base"),
                        {n: media_dir / n for n in ("face_occluded.mp4", "face_pan.mp4", "speech_es.wav")},
                        resolution=256)  # a sharper preview crop than the micro model's 64 pixels
    write_settings(base)
    with ComfyServer(COMFYUI_DIR, base).running() as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    driver = start_browser()
    try:
        yield driver
    finally:
        driver.quit()


def occlusion_workflow() -> tuple[str, dict]:
    for path in sorted((REPO / "workflows").glob("*.json")):
        graph = json.loads(path.read_text())
        if any(n["type"] == NODE for n in graph.get("nodes", [])):
            return path.stem, graph
    raise AssertionError(f"no UI workflow in workflows/ has a {NODE} node")


def node_id(driver) -> int:
    return driver.execute_script(f"return {APP}.graph.nodes.find((n) => n.type === {NODE!r}).id;")


def show_node(driver, nid: int):
    """Zoom 1, the node near the top left of the canvas (its DOM widgets are placed only when it is on screen)."""
    driver.execute_script(f"""
        const app = {APP}; const node = app.graph.getNodeById(arguments[0]);
        app.canvas.ds.scale = 1;
        app.canvas.ds.offset[0] = 120 - node.pos[0];
        app.canvas.ds.offset[1] = 80 - node.pos[1];
        app.canvas.setDirty(true, true);""", nid)
    return wait_for(driver, f"""
        const node = {APP}.graph.getNodeById(arguments[0]);
        const e = node.stabledubEditor.element; const r = e.getBoundingClientRect();
        return e.isConnected && r.width > 100 && r.height > 100 && getComputedStyle(e).display !== 'none'
            && getComputedStyle(e.parentElement).display !== 'none';""".replace("arguments[0]", str(nid)),
                    "the editor on screen", 30)


def patches(driver, nid: int) -> dict:
    return json.loads(driver.execute_script(
        f"return {APP}.graph.getNodeById(arguments[0]).widgets.find((w) => w.name === 'patches').value;", nid))


def click_cell(driver, nid: int, row: int, col: int):
    """A real mouse click at the centre of a patch of the editor's picture."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.execute_script(f"return {APP}.graph.getNodeById(arguments[0]).stabledubEditor.canvas;", nid)
    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.width, r.height];", canvas)
    grid = patches(driver, nid)["grid"]
    side = min(rect)
    x = (rect[0] - side) / 2 + (col + 0.5) * side / grid  # the picture is the centred square of the canvas
    y = (rect[1] - side) / 2 + (row + 0.5) * side / grid
    ActionChains(driver).move_to_element_with_offset(canvas, int(x - rect[0] / 2), int(y - rect[1] / 2)).click() \
        .perform()


def test_exposure_editor_in_the_real_front_end(server, browser, tmp_path):
    driver = browser
    open_front_end(driver, server.url, NODE)
    assert driver.execute_script(f"return {APP}.extensions.some((e) => e.name === 'StableDub.ExposureEditor')")
    name, workflow = occlusion_workflow()
    load(driver, workflow, name)
    errors = console_errors(driver)
    assert not errors, errors  # e.g. "Error loading extension ... Failed to fetch dynamically imported module"

    nid = node_id(driver)
    assert driver.execute_script(f"return !!{APP}.graph.getNodeById({nid}).stabledubEditor"), "no editor on the node"
    assert not overlaps(driver)  # the editor grew its node: the workflow leaves room for it
    driver.execute_script(f"""
        for (const node of {APP}.graph.nodes) {{  // a short clip (the preview runs in seconds on a CPU) whose
            const cap = node.widgets?.find((w) => w.name === 'frame_load_cap'); if (cap) cap.value = 44;
            const frame = node.widgets?.find((w) => w.name === 'preview_frame'); if (frame) frame.value = 42;
        }}""")  # previewed frame shows the microphone over the mouth
    show_node(driver, nid)
    # Nothing overlaps: the editor comes after the other widgets, inside the node.
    layout = driver.execute_script(f"""
        const node = {APP}.graph.getNodeById(arguments[0]);
        return node.widgets.map((w) => [w.name, w.y, w.computedHeight ?? LiteGraph.NODE_WIDGET_HEIGHT])
            .concat([['node', node.size[1], 0]]);""", nid)
    *widgets, (_, node_height, _) = layout
    editor = next(w for w in widgets if w[0] == "patch_editor")
    others = [w for w in widgets if w[0] != "patch_editor"]
    assert all(y + h <= editor[1] + 1 for _, y, h in others), layout
    assert editor[1] + editor[2] <= node_height + 1, layout
    history = len(server.get("/history"))

    driver.find_element("css selector", ".stabledub-preview-button").click()  # a real click
    wait_for(driver, f"return !!{APP}.graph.getNodeById({nid}).stabledubEditor.image", "the preview crop")
    entries = server.get("/history")
    assert len(entries) == history + 1
    (entry,) = [v for k, v in entries.items() if str(nid) in v["outputs"]]
    assert set(entry["outputs"]) == {str(nid)}  # the node alone, not the dub
    status = driver.execute_script(f"return {APP}.graph.getNodeById({nid}).stabledubEditor.status.textContent;")
    assert status.startswith("frame 42")

    assert patches(driver, nid) == {"grid": 16, "cells": []}
    for row, col in ((10, 9), (10, 10), (11, 10), (10, 9)):  # the last click toggles (10, 9) off again
        click_cell(driver, nid, row, col)
    expected = {"grid": 16, "cells": [[10, 10], [11, 10]]}
    assert patches(driver, nid) == expected

    saved = serialized(driver)
    node = next(n for n in saved["nodes"] if n["id"] == nid)
    assert json.loads(node["widgets_values"][0]) == expected  # the patches widget in the workflow
    assert len(node["widgets_values"]) == 4  # patches, occluder_grid, occluder_fraction, preview_frame: no editor
    assert node["properties"]["stabledub_preview"]["image"].startswith("data:image/jpeg")
    api = prompt(driver)
    assert json.loads(api[str(nid)]["inputs"]["patches"]) == expected  # and in the API prompt
    assert "patch_editor" not in api[str(nid)]["inputs"]

    screenshot(driver, graph_box(driver, nid), tmp_path / "exposure_editor.png")
    if os.environ.get("STABLEDUB_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "exposure_editor.png", DOCS_SCREENSHOT)

    # The saved workflow loaded again: the picture is back without running anything.
    load(driver, EMPTY, "empty")
    load(driver, saved, name)
    nid = node_id(driver)
    show_node(driver, nid)
    wait_for(driver, f"return !!{APP}.graph.getNodeById({nid}).stabledubEditor.image", "the kept preview", 30)
    assert patches(driver, nid) == expected
    assert len(server.get("/history")) == history + 1
    errors = console_errors(driver, ("SEVERE", "WARNING"))
    assert not errors, errors
    assert not schema_alert(driver), schema_alert(driver)  # the saved workflow matches the front end's schema


WORKFLOW_NAMES = tuple(sorted(p.stem for p in (REPO / "workflows").glob("*.json")))


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_workflow_loads_in_the_real_front_end(server, browser, name):
    """Each template opens with every node known, nothing overlapping, no console error of ours, and Queue would send
    exactly its API twin (``workflows/api/``)."""
    driver = browser
    if not driver.execute_script("return !!window.comfyAPI?.app?.app?.graph"):
        open_front_end(driver, server.url, NODE)
    load(driver, json.loads((REPO / "workflows" / f"{name}.json").read_text()), name)
    unknown = driver.execute_script(
        f"return {APP}.graph.nodes.filter((n) => !LiteGraph.registered_node_types[n.type]).map((n) => n.type);")
    assert not unknown, unknown
    assert not schema_alert(driver), schema_alert(driver)  # the file matches the front end's workflow schema
    assert not overlaps(driver)
    loaders = driver.execute_script(f"""return {APP}.graph.nodes.filter((n) => n.type.startsWith('StableDubLoadVideo')
        || n.type === 'StableDubDubVideoFile').map((n) => n.widgets.map((w) => w.name));""")
    for names in loaders:  # the video list has the front end's upload button (and its video preview)
        assert "upload" in names, names
    assert prompt(driver) == json.loads((REPO / "workflows" / "api" / f"{name}_api.json").read_text())
    errors = console_errors(driver)
    assert not errors, errors
