"""The exposure patch editor (web/js/stabledub.js) under Node.js with stand-ins for ComfyUI's app, api and the DOM.

Skipped when ``node`` is not installed. Checks that clicking the preview toggles patches in the ``patches`` widget
as the core's ExposedPatches JSON, that a grid change clears patches painted on another grid, and that the editor
widget is not serialised (the workflow's widget values stay those of INPUT_TYPES).
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
};
"""
API = "export const api = { apiURL: (path) => path };"
SCENARIO = r"""
class Context { constructor() { this.calls = []; }
    clearRect() {} drawImage() {} fillRect() {} strokeRect() {} beginPath() {} moveTo() {} lineTo() {} stroke() {}
    fillText() {} }
globalThis.document = { createElement: () => ({
    style: {}, width: 0, height: 0, listeners: {},
    addEventListener(type, fn) { this.listeners[type] = fn; },
    getBoundingClientRect() { return { left: 0, top: 0, width: 320, height: 320 }; },
    getContext() { return new Context(); } }) };
globalThis.requestAnimationFrame = (fn) => fn();
globalThis.Image = class { set src(value) { this._src = value; this.onload?.(); } };
const { app } = await import("./scripts/app.js");
await import("./extensions/stabledub/stabledub.js");
const [ext] = app.extensions;
function NodeType() {}
await ext.beforeRegisterNodeDef(NodeType, { name: "StableDubOccluderExposure" });
const node = new NodeType();
node.widgets = [
    { name: "patches", value: '{"grid": 16, "cells": []}' },
    { name: "occluder_grid", value: 16 },
];
const dom = [];
node.addDOMWidget = (name, type, element, options) => { dom.push({ name, options }); return {}; };
node.onNodeCreated();
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
out.dom = dom.map((d) => ({ name: d.name, serialize: d.options.serialize }));
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(NODE is None, reason="Node.js is not installed")
def test_patch_editor_toggles_patches(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "app.js").write_text(APP)
    (tmp_path / "scripts" / "api.js").write_text(API)
    (tmp_path / "extensions" / "stabledub").mkdir(parents=True)
    shutil.copy(REPO / "web" / "js" / "stabledub.js", tmp_path / "extensions" / "stabledub" / "stabledub.js")
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "scenario.js").write_text(SCENARIO)
    done = subprocess.run([NODE, "scenario.js"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert json.loads(out["before"]) == {"grid": 16, "cells": []}
    assert json.loads(out["after"]) == {"grid": 16, "cells": [[7, 10], [15, 15]]}
    assert json.loads(out["regrid"]) == {"grid": 8, "cells": []}
    assert out["dom"] == [{"name": "patch_editor", "serialize": False}]

    from stabledub_core.masks.exposure import ExposedPatches

    assert ExposedPatches.from_json(out["after"]).cells == [(7, 10), (15, 15)]  # the core reads what the editor wrote
