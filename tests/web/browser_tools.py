"""Headless Chromium on the real ComfyUI front end (Selenium): what the browser test and the workflow builder share.

The browser resolves no host but 127.0.0.1, so the front end's calls to outside services fail at once and no traffic
leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
APP = "window.comfyAPI.app.app"
TIMEOUT = 180
# Front-end settings of a fresh test user: no template gallery over the canvas at the first visit, no minimap over
# the graph, text drawn at any zoom (screenshots of whole graphs).
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "LiteGraph.Canvas.MinFontSizeForLOD": 0}


def write_settings(base: Path) -> None:
    """The user settings of a ComfyUI base directory (``user/default/comfy.settings.json``)."""
    path = base / "user" / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(SETTINGS))


def start_browser(size: tuple[int, int] = (1600, 1000)):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={size[0]},{size[1]}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(argument)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(TIMEOUT)
    return driver


def wait_for(driver, script: str, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


def open_front_end(driver, url: str, node_type: str) -> None:
    """Load the page and wait until the app has registered the node definitions and loaded its start-up graph."""
    driver.get(url + "/")
    wait_for(driver, f"return !!(window.comfyAPI?.app?.app?.graph && {APP}.extensions?.length)", "the front end")
    wait_for(driver, f"return !!(window.LiteGraph?.registered_node_types?.[{node_type!r}] && {APP}.canvas"
                     f" && {APP}.graph.nodes.length)", "the node definitions and the start-up graph", 60)


def load(driver, graph: dict, name: str, settle: float = 3.0) -> None:
    """Open a workflow as the user does, and give the front end ``settle`` seconds to draw it (video previews load
    and size their nodes)."""
    error = driver.execute_async_script(
        f"const done = arguments[arguments.length - 1]; {APP}.loadGraphData(arguments[0], true, true, arguments[1])"
        ".then(() => done(null), (e) => done(String(e)));", graph, name)
    assert error is None, error
    driver.execute_script(f"{APP}.canvas.setDirty(true, true);")
    time.sleep(settle)


def serialized(driver) -> dict:
    """The loaded graph as the front end saves it. Taken through JSON in the page: WebDriver would turn the
    properties the front end leaves ``undefined`` into nulls, which its own workflow schema then refuses
    ("Invalid workflow against zod schema" on opening the file)."""
    return json.loads(driver.execute_script(f"return JSON.stringify({APP}.graph.serialize());"))


def schema_alert(driver) -> str:
    """The text of the front end's alert that a loaded workflow does not match its schema ("Invalid workflow
    against zod schema"), or "" when none is shown."""
    return driver.execute_script("""
        const text = document.body.innerText || "";
        const at = text.toLowerCase().indexOf("invalid workflow");
        return at < 0 ? "" : text.slice(at, at + 300);""")


def prompt(driver) -> dict:
    """The API prompt of the loaded graph, as Queue would send it."""
    return driver.execute_async_script(
        f"const done = arguments[arguments.length - 1]; {APP}.graphToPrompt().then((p) => done(p.output));")


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


def graph_box(driver, node_id: int | None = None) -> list[float]:
    """``[x0, y0, x1, y1]`` in graph coordinates of one node, or of all nodes, title bars included."""
    return driver.execute_script(f"""
        const title = LiteGraph.NODE_TITLE_HEIGHT;
        const nodes = arguments[0] === null ? {APP}.graph.nodes : [{APP}.graph.getNodeById(arguments[0])];
        return [Math.min(...nodes.map((n) => n.pos[0])), Math.min(...nodes.map((n) => n.pos[1] - title)),
                Math.max(...nodes.map((n) => n.pos[0] + n.size[0])),
                Math.max(...nodes.map((n) => n.pos[1] + n.size[1]))];
        """, node_id)


def view(driver, box: list[float], margin: float = 24, max_scale: float = 1.0) -> None:
    """Scale and scroll the canvas so the graph box fills the page below the menus."""
    driver.execute_script(f"""
        const app = {APP}; const [x0, y0, x1, y1] = arguments[0]; const margin = arguments[1];
        const r = app.canvas.canvas.getBoundingClientRect(); const top = 90, left = 80;
        const scale = Math.min(arguments[2], (r.width - left - 2 * margin) / (x1 - x0),
                               (r.height - top - 2 * margin) / (y1 - y0));
        app.canvas.ds.scale = scale;
        app.canvas.ds.offset[0] = (left + margin) / scale - x0;
        app.canvas.ds.offset[1] = (top + margin) / scale - y0;
        app.canvas.setDirty(true, true);""", box, margin, max_scale)
    time.sleep(0.5)  # one drawn frame (DOM widgets follow the canvas)


def screenshot(driver, box: list[float], path: Path, margin: int = 24, width: int | None = None,
               quality: int = 90) -> None:
    """The graph box (graph coordinates) cut out of a screenshot of the page; PNG or JPEG by ``path``'s suffix."""
    import cv2

    rect = driver.execute_script(f"""
        const app = {APP}; const [x0, y0, x1, y1] = arguments[0];
        const r = app.canvas.canvas.getBoundingClientRect();
        const a = app.canvas.ds.convertOffsetToCanvas([x0, y0]), b = app.canvas.ds.convertOffsetToCanvas([x1, y1]);
        return [r.left + a[0], r.top + a[1], r.left + b[0], r.top + b[1], window.devicePixelRatio];""", box)
    image = cv2.imdecode(np.frombuffer(driver.get_screenshot_as_png(), np.uint8), cv2.IMREAD_COLOR)
    x0, y0, x1, y1 = (int(round(v * rect[4])) for v in rect[:4])
    crop = image[max(0, y0 - margin):y1 + margin, max(0, x0 - margin):x1 + margin]
    assert crop.size, rect
    if width is not None and crop.shape[1] > width:
        crop = cv2.resize(crop, (width, round(crop.shape[0] * width / crop.shape[1])), interpolation=cv2.INTER_AREA)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    assert cv2.imwrite(str(path), crop, params)


def console_errors(driver, levels=("SEVERE",)) -> list[str]:
    """Console messages about this pack since the last call: its extension failing to load, its files, its editor's
    warnings (the front end asking outside services about node packs fails here by design and is left out)."""
    out = []
    for entry in driver.get_log("browser"):
        text = entry["message"].lower()
        if entry["level"] in levels and "err_name_not_resolved" not in text and (
                "stabledub" in text or "error loading extension" in text or "/extensions/" in text):
            out.append(entry["message"])
    return out
