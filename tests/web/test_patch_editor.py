"""The exposure patch editor (web/js/stabledub.js) under Node.js with stand-ins for ComfyUI's app, api and the DOM.

Skipped when ``node`` is not installed. The file sits where ComfyUI serves it (``/extensions/<pack folder>/js/``,
its imports three folders up: a wrong depth fails the import as in the real front end). Checks that clicking the
preview toggles patches in the ``patches`` widget as the core's ExposedPatches JSON, that a grid change clears patches
painted on another grid, that the editor widget is not serialised (the workflow's widget values stay those of
INPUT_TYPES), that Preview crop queues this node alone, and that a configured node (a loaded workflow) shows the kept
preview again. The real front end: ``tests/web/test_browser.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NODE = shutil.which("node")

APP = """
export const app = {
    extensions: [],
    registerExtension(ext) { this.extensions.push(ext); },
    graph: { setDirtyCanvas() {} },
    queued: [],
    async queuePrompt(number, batchCount, ids) { this.queued.push({ number, batchCount, ids }); },
};
"""
API = "export const api = { apiURL: (path) => path };"
SCENARIO = r"""
class Context { constructor() { this.calls = []; }
    clearRect() {} drawImage() {} fillRect() {} strokeRect() {} beginPath() {} moveTo() {} lineTo() {} stroke() {}
    fillText() {} }
const elements = [];
globalThis.document = { createElement: (tag) => { const e = {
    tag, style: {}, width: 0, height: 0, listeners: {}, children: [],
    append(...c) { this.children.push(...c); },
    addEventListener(type, fn) { this.listeners[type] = fn; },
    getBoundingClientRect() { return { left: 0, top: 0, width: 320, height: 320 }; },
    getContext() { return new Context(); },
    toDataURL(type) { return `data:${type};base64,AAAA`; } }; elements.push(e); return e; } };
globalThis.requestAnimationFrame = (fn) => fn();
globalThis.Image = class { set src(value) { this._src = value; this.naturalWidth = 64; this.onload?.(); }
    get src() { return this._src; } };
const { app } = await import("./scripts/app.js");
await import("./extensions/ComfyUI-StableDub/js/stabledub.js");
const [ext] = app.extensions;
function NodeType() {}
NodeType.prototype.computeSize = function () { return [300, 420]; };
NodeType.prototype.setSize = function (size) { this.size = size; };
await ext.beforeRegisterNodeDef(NodeType, { name: "StableDubOccluderExposure" });
const dom = [];
function makeNode(id) {
    const node = new NodeType();
    node.id = id;
    node.size = [200, 100];
    node.widgets = [
        { name: "patches", value: '{"grid": 16, "cells": []}' },
        { name: "occluder_grid", value: 16 },
    ];
    node.addDOMWidget = (name, type, element, options) => { const w = { name, options }; dom.push(w); return w; };
    node.onNodeCreated();
    return node;
}
const node = makeNode(7);
const editor = node.stabledubEditor;
const click = (x, y) => editor.canvas.listeners.pointerdown({
    clientX: x, clientY: y, preventDefault() {}, stopPropagation() {} });
const out = {};
click(5, 5);  // before a run there is no preview: nothing happens
out.before = node.widgets[0].value;
node.onExecuted({ stabledub_preview: [{ filename: "p.png", subfolder: "", type: "temp" }],
                  stabledub_union_cells: Array.from({ length: 16 }, () => Array(16).fill(0)),
                  stabledub_occluder_cells: [[1, 1]] });
click(10 * 20 + 5, 7 * 20 + 5);   // row 7, col 10 (20-pixel cells on a 320-pixel canvas)
click(3 * 20 + 5, 12 * 20 + 5);   // row 12, col 3
click(319, 319);                  // row 15, col 15
click(3 * 20 + 5, 12 * 20 + 5);   // toggled off again
out.after = node.widgets[0].value;
node.widgets[1].value = 8;
node.widgets[1].callback(8);
out.regrid = node.widgets[0].value;
out.dom = dom.map((d) => ({ name: d.name, serialize: d.options.serialize, widgetSerialize: d.serialize }));
out.size = node.size;
out.kept = node.properties.stabledub_preview;
const button = elements.find((e) => e.className === "stabledub-preview-button");
await button.listeners.click({ preventDefault() {}, stopPropagation() {} });
out.queued = app.queued;
// A loaded workflow: a new node configured with the saved properties shows the kept preview, nothing queued.
const loaded = makeNode(8);
loaded.properties = JSON.parse(JSON.stringify(node.properties));
loaded.onConfigure({});
out.restored = { image: loaded.stabledubEditor.image?.src ?? null, union: loaded.stabledubEditor.union?.length,
                 occluded: loaded.stabledubEditor.occluded };
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_patch_editor_toggles_patches(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(APP)
    (tmp_path / "scripts" / "api.js").write_text(API)
    served = tmp_path / "extensions" / "ComfyUI-StableDub" / "js"  # /extensions/<pack folder>/ + web/'s js/
    served.mkdir(parents=True)
    shutil.copy(REPO / "web" / "js" / "stabledub.js", served / "stabledub.js")
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "scenario.js").write_text(SCENARIO)
    done = subprocess.run([NODE, "scenario.js"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads(out["before"]) == {"grid": 16, "cells": []}
    assert json.loads(out["after"]) == {"grid": 16, "cells": [[7, 10], [15, 15]]}
    assert json.loads(out["regrid"]) == {"grid": 8, "cells": []}
    assert out["dom"][0] == {"name": "patch_editor", "serialize": False, "widgetSerialize": False}
    assert out["size"][0] >= 320 and out["size"][1] >= 420  # grown to hold the widgets and the editor
    assert out["kept"]["image"].startswith("data:image/jpeg") and out["kept"]["occluded"] == [[1, 1]]
    assert out["queued"] == [{"number": 0, "batchCount": 1, "ids": ["7"]}]  # this node alone
    assert out["restored"] == {"image": out["kept"]["image"], "union": 16, "occluded": [[1, 1]]}

    from stabledub_core.masks.exposure import ExposedPatches

    assert ExposedPatches.from_json(out["after"]).cells == [(7, 10), (15, 15)]  # the core reads what the editor wrote
