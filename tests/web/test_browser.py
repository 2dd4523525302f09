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
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.comfy_stub import REPO, ComfyServer, install_base

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
webdriver = pytest.importorskip("selenium.webdriver", reason="Selenium is not installed") if COMFYUI_DIR else None
pytestmark = [
    pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run"),
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromium-driver are not installed"),
]
NODE = "StableDubOccluderExposure"
DOCS_SCREENSHOT = REPO / "docs" / "exposure_editor.png"
APP = "window.comfyAPI.app.app"
TIMEOUT = 180


@pytest.fixture(scope="module")
def server(tmp_path_factory, media_dir):
    base = install_base(tmp_path_factory.mktemp("comfyui_base"),
                        {n: media_dir / n for n in ("face_occluded.mp4", "speech_es.wav")},
                        resolution=256)  # a sharper preview crop than the micro model's 64 pixels
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True}))  # no template gallery over the canvas
    with ComfyServer(COMFYUI_DIR, base).running() as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1600,1000", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, script: str, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def ours(entry: dict) -> bool:
    """A console message about this pack: its extension failing to load, its files, its editor's warnings."""
    text = entry["message"].lower()
    if "err_name_not_resolved" in text:  # the front end asking outside services (blocked here) about node packs
        return False
    return "stabledub" in text or "error loading extension" in text or "/extensions/" in text


def occlusion_workflow() -> tuple[str, dict]:
    for path in sorted((REPO / "workflows").glob("*.json")):
        graph = json.loads(path.read_text())
        if any(n["type"] == NODE for n in graph.get("nodes", [])):
            return path.stem, graph
    raise AssertionError(f"no UI workflow in workflows/ has a {NODE} node")


def load(driver, graph: dict, name: str):
    driver.execute_async_script(
        f"const done = arguments[arguments.length - 1]; {APP}.loadGraphData(arguments[0], true, true, arguments[1])"
        ".then(() => done(true), (e) => done(String(e)));", graph, name)


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


def screenshot(driver, nid: int, path: Path):
    """The node (title bar to bottom edge, with a margin) cut out of a screenshot of the page."""
    import cv2

    box = driver.execute_script(f"""
        const app = {APP}; const node = app.graph.getNodeById(arguments[0]);
        const r = app.canvas.canvas.getBoundingClientRect(); const title = LiteGraph.NODE_TITLE_HEIGHT;
        const [x0, y0] = app.canvas.ds.convertOffsetToCanvas([node.pos[0], node.pos[1] - title]);
        const [x1, y1] = app.canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0], node.pos[1] + node.size[1]]);
        return [r.left + x0, r.top + y0, r.left + x1, r.top + y1, window.devicePixelRatio];""", nid)
    image = cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)
    x0, y0, x1, y1 = (int(round(v * box[4])) for v in box[:4])
    margin = 24
    crop = image[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin]
    assert crop.size and cv2.imwrite(str(path), crop)


def overlaps(driver) -> list:
    """Pairs of nodes of the loaded graph whose boxes (title bar included) intersect, as the front end sized them."""
    return driver.execute_script(f"""
        const title = LiteGraph.NODE_TITLE_HEIGHT;
        const box = (n) => [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
        const nodes = {APP}.graph.nodes, out = [];
        for (let i = 0; i < nodes.length; i++) for (let j = i + 1; j < nodes.length; j++) {{
            const [a, b] = [box(nodes[i]), box(nodes[j])];
            if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) out.push([nodes[i].type, nodes[j].type]);
        }}
        return out;""")


def test_exposure_editor_in_the_real_front_end(server, browser, tmp_path):
    driver = browser
    driver.get(server.url + "/")
    wait_for(driver, f"return !!(window.comfyAPI?.app?.app?.graph && {APP}.extensions?.length)", "the front end")
    wait_for(driver, f"return {APP}.extensions.some((e) => e.name === 'StableDub.ExposureEditor')",
             "the StableDub extension", 60)
    wait_for(driver, f"return !!(window.LiteGraph?.registered_node_types?.[{NODE!r}] && {APP}.canvas"
                     f" && {APP}.graph.nodes.length)", "the node definitions and the start-up graph", 60)
    name, workflow = occlusion_workflow()
    load(driver, workflow, name)
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and ours(e)]
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

    saved = driver.execute_script(f"return {APP}.graph.serialize();")
    node = next(n for n in saved["nodes"] if n["id"] == nid)
    assert json.loads(node["widgets_values"][0]) == expected  # the patches widget in the workflow
    assert len(node["widgets_values"]) == 4  # patches, occluder_grid, occluder_fraction, preview_frame: no editor
    assert node["properties"]["stabledub_preview"]["image"].startswith("data:image/jpeg")
    prompt = driver.execute_async_script(
        f"const done = arguments[arguments.length - 1]; {APP}.graphToPrompt().then((p) => done(p.output));")
    assert json.loads(prompt[str(nid)]["inputs"]["patches"]) == expected  # and in the API prompt
    assert "patch_editor" not in prompt[str(nid)]["inputs"]

    screenshot(driver, nid, tmp_path / "exposure_editor.png")
    if os.environ.get("STABLEDUB_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "exposure_editor.png", DOCS_SCREENSHOT)

    # The saved workflow loaded again: the picture is back without running anything.
    load(driver, {"nodes": [], "links": [], "version": 0.4}, "empty")
    load(driver, saved, name)
    nid = node_id(driver)
    show_node(driver, nid)
    wait_for(driver, f"return !!{APP}.graph.getNodeById({nid}).stabledubEditor.image", "the kept preview", 30)
    assert patches(driver, nid) == expected
    assert len(server.get("/history")) == history + 1
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING") and ours(e)]
    assert not errors, errors
