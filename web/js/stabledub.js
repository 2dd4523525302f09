// ComfyUI-StableDub front end: the exposure patch editor of "StableDub Occluder Exposure".
//
// After the node has run, its preview crop (one frame at the model's crop size) is shown with the G x G patch
// grid; the patches of the union mask Mu are outlined in blue and the exposed ones (kept visible, e.g. a hand or
// a microphone over the mouth) are filled in yellow; those an occluder MASK input exposes in the previewed frame are
// crossed in orange. Click a patch to toggle it. The list is stored in the node's
// `patches` STRING widget as the core's ExposedPatches JSON: {"grid": G, "cells": [[row, col], ...]} in crop
// coordinates, so it is saved with the workflow and applies to every frame.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE = "StableDubOccluderExposure";
const EDITOR_HEIGHT = 280;
const UNION_COLOUR = "rgba(40, 110, 255, 0.9)";
const EXPOSED_COLOUR = "rgba(255, 220, 0, 0.55)";
const GRID_COLOUR = "rgba(255, 255, 255, 0.25)";
const OCCLUDER_COLOUR = "rgba(255, 140, 0, 0.9)";

function widget(node, name) {
    return node.widgets?.find((w) => w.name === name);
}

function readPatches(node) {
    const grid = widget(node, "occluder_grid")?.value ?? 16;
    try {
        const parsed = JSON.parse(widget(node, "patches")?.value || "{}");
        if (parsed.grid === grid && Array.isArray(parsed.cells)) {
            return { grid, cells: parsed.cells.map(([r, c]) => [r, c]) };
        }
    } catch (error) {
        console.warn("StableDub: the patches widget holds invalid JSON; starting from no patches", error);
    }
    return { grid, cells: [] };
}

function writePatches(node, patches) {
    const cells = [...patches.cells].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    const text = JSON.stringify({ grid: patches.grid, cells });
    const w = widget(node, "patches");
    if (w && w.value !== text) {
        w.value = text;
        w.callback?.(text);
    }
}

class PatchEditor {
    constructor(node) {
        this.node = node;
        this.image = null; // the preview crop
        this.union = null; // G x G 0/1 array of Mu's patches (from the last run)
        this.occluded = []; // [row, col] patches the occluder MASK exposes in the preview frame (last run)
        this.canvas = document.createElement("canvas");
        this.canvas.style.width = "100%";
        this.canvas.style.height = "100%";
        this.canvas.style.cursor = "crosshair";
        this.canvas.title = "Click patches to keep them visible (exposed)";
        this.canvas.addEventListener("pointerdown", (event) => this.click(event));
    }

    // The square area of the canvas the crop is drawn in: [x, y, side] in canvas pixels.
    square() {
        const { width, height } = this.canvas;
        const side = Math.min(width, height);
        return [(width - side) / 2, (height - side) / 2, side];
    }

    click(event) {
        if (!this.image) return;
        event.preventDefault();
        event.stopPropagation();
        const rect = this.canvas.getBoundingClientRect();
        const px = ((event.clientX - rect.left) / rect.width) * this.canvas.width;
        const py = ((event.clientY - rect.top) / rect.height) * this.canvas.height;
        const [x0, y0, side] = this.square();
        const patches = readPatches(this.node);
        const col = Math.floor(((px - x0) / side) * patches.grid);
        const row = Math.floor(((py - y0) / side) * patches.grid);
        if (row < 0 || col < 0 || row >= patches.grid || col >= patches.grid) return;
        const at = patches.cells.findIndex(([r, c]) => r === row && c === col);
        if (at >= 0) patches.cells.splice(at, 1);
        else patches.cells.push([row, col]);
        writePatches(this.node, patches);
        this.draw();
    }

    draw() {
        const canvas = this.canvas;
        const rect = canvas.getBoundingClientRect();
        canvas.width = Math.max(64, Math.round(rect.width || 256));
        canvas.height = Math.max(64, Math.round(rect.height || EDITOR_HEIGHT));
        const ctx = canvas.getContext("2d");
        ctx.clearRect(0, 0, canvas.width, canvas.height);
        const [x0, y0, side] = this.square();
        if (!this.image) {
            ctx.fillStyle = "#888";
            ctx.font = "12px sans-serif";
            ctx.textAlign = "center";
            ctx.fillText("Run the node to see the crop, then click patches", canvas.width / 2, canvas.height / 2);
            return;
        }
        ctx.drawImage(this.image, x0, y0, side, side);
        const patches = readPatches(this.node);
        const g = patches.grid;
        const cell = side / g;
        ctx.fillStyle = EXPOSED_COLOUR;
        for (const [r, c] of patches.cells) ctx.fillRect(x0 + c * cell, y0 + r * cell, cell, cell);
        ctx.strokeStyle = GRID_COLOUR;
        ctx.lineWidth = 1;
        ctx.beginPath();
        for (let i = 0; i <= g; i++) {
            ctx.moveTo(x0 + i * cell, y0);
            ctx.lineTo(x0 + i * cell, y0 + side);
            ctx.moveTo(x0, y0 + i * cell);
            ctx.lineTo(x0 + side, y0 + i * cell);
        }
        ctx.stroke();
        if (this.union && this.union.length === g) {
            ctx.strokeStyle = OCCLUDER_COLOUR; // exposed by the occluder MASK (not editable here)
            ctx.lineWidth = 1;
            ctx.beginPath();
            for (const [r, c] of this.occluded) {
                ctx.moveTo(x0 + c * cell, y0 + (r + 1) * cell);
                ctx.lineTo(x0 + (c + 1) * cell, y0 + r * cell);
            }
            ctx.stroke();
            ctx.strokeStyle = UNION_COLOUR;
            ctx.lineWidth = 2;
            for (let r = 0; r < g; r++) {
                for (let c = 0; c < g; c++) {
                    if (this.union[r][c]) ctx.strokeRect(x0 + c * cell + 1, y0 + r * cell + 1, cell - 2, cell - 2);
                }
            }
        }
    }

    // The node's UI output: {stabledub_preview: [{filename, subfolder, type}], stabledub_grid,
    // stabledub_union_cells, stabledub_occluder_cells}
    show(output) {
        const ref = output?.stabledub_preview?.[0];
        this.union = output?.stabledub_union_cells ?? null;
        this.occluded = output?.stabledub_occluder_cells ?? [];
        if (!ref) return;
        const params = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder ?? "", type: ref.type });
        const image = new Image();
        image.onload = () => {
            this.image = image;
            this.draw();
            app.graph.setDirtyCanvas(true, false);
        };
        image.src = api.apiURL(`/view?${params}&rand=${Math.random()}`);
    }
}

app.registerExtension({
    name: "StableDub.ExposureEditor",
    async beforeRegisterNodeDef(nodeType, nodeData) {
        if (nodeData.name !== NODE) return;

        const onNodeCreated = nodeType.prototype.onNodeCreated;
        nodeType.prototype.onNodeCreated = function () {
            const result = onNodeCreated?.apply(this, arguments);
            const editor = new PatchEditor(this);
            this.stabledubEditor = editor;
            this.addDOMWidget("patch_editor", "stabledub_patch_editor", editor.canvas, {
                serialize: false, // the patches live in the `patches` STRING widget
                getMinHeight: () => EDITOR_HEIGHT,
            });
            const grid = widget(this, "occluder_grid");
            if (grid) {
                const gridCallback = grid.callback;
                grid.callback = (value) => {
                    gridCallback?.call(grid, value);
                    writePatches(this, readPatches(this)); // a grid change clears patches painted on another grid
                    editor.draw();
                };
            }
            const patches = widget(this, "patches");
            if (patches) {
                const patchesCallback = patches.callback;
                patches.callback = (value) => {
                    patchesCallback?.call(patches, value);
                    editor.draw();
                };
            }
            requestAnimationFrame(() => editor.draw());
            return result;
        };

        const onExecuted = nodeType.prototype.onExecuted;
        nodeType.prototype.onExecuted = function (output) {
            onExecuted?.apply(this, arguments);
            this.stabledubEditor?.show(output);
        };

        const onResize = nodeType.prototype.onResize;
        nodeType.prototype.onResize = function () {
            const result = onResize?.apply(this, arguments);
            this.stabledubEditor?.draw();
            return result;
        };
    },
});
