// ComfyUI-StableDub front end: the exposure patch editor of "StableDub Occluder Exposure".
//
// The node's preview crop (one frame at the model's crop size) is shown with the G x G patch grid; the patches of
// the union mask Mu are outlined in blue and the exposed ones (kept visible, e.g. a hand or a microphone over the
// mouth) are filled in yellow; those an occluder MASK input exposes in the previewed frame are crossed in orange.
// Click a patch to toggle it. The list is stored in the node's `patches` STRING widget as the core's ExposedPatches
// JSON: {"grid": G, "cells": [[row, col], ...]} in crop coordinates, so it is saved with the workflow and the API
// prompt, and applies to every frame.
//
// "Preview crop" queues this node alone (it is an output node: ComfyUI runs only what it needs, tracking and
// planning, not the dub). The last preview is kept in the node's properties (a small JPEG), so the picture comes
// back when the workflow is loaded again, without running anything.
//
// ComfyUI serves a pack's web/ folder at /extensions/<pack folder>/, so this file is
// /extensions/<pack folder>/js/stabledub.js and the front end's modules are three folders up.

import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const NODE = "StableDubOccluderExposure";
const CANVAS_HEIGHT = 280;
const TOOLBAR_HEIGHT = 30;
const MIN_WIDTH = 320;
const STORED_SIDE = 256; // side of the preview kept in the workflow (JPEG)
const PROPERTY = "stabledub_preview";
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
        node.graph?.change?.(); // the workflow is modified (saved, undoable)
    }
}

class PatchEditor {
    constructor(node) {
        this.node = node;
        this.image = null; // the preview crop
        this.union = null; // G x G 0/1 array of Mu's patches (from the last run)
        this.occluded = []; // [row, col] patches the occluder MASK exposes in the preview frame (last run)
        this.element = document.createElement("div");
        this.element.className = "stabledub-editor";
        Object.assign(this.element.style, {
            display: "flex", flexDirection: "column", gap: "4px", width: "100%", height: "100%",
            boxSizing: "border-box", overflow: "hidden",
        });
        const bar = document.createElement("div");
        Object.assign(bar.style, {
            display: "flex", alignItems: "center", gap: "8px", height: `${TOOLBAR_HEIGHT - 4}px`, flex: "none",
        });
        this.button = document.createElement("button");
        this.button.className = "stabledub-preview-button";
        this.button.textContent = "Preview crop";
        this.button.title = "Run only what this node needs (tracking, planning) to show the crop; not the dub";
        Object.assign(this.button.style, {
            cursor: "pointer", fontSize: "12px", padding: "2px 8px", whiteSpace: "nowrap", flex: "none",
        });
        this.button.addEventListener("click", (event) => {
            event.preventDefault();
            event.stopPropagation();
            this.preview();
        });
        this.status = document.createElement("span");
        this.status.className = "stabledub-status";
        Object.assign(this.status.style, {
            fontSize: "11px", opacity: "0.75", whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis",
        });
        bar.append(this.button, this.status);
        this.canvas = document.createElement("canvas");
        Object.assign(this.canvas.style, { width: "100%", flex: "1 1 auto", minHeight: "0", cursor: "crosshair" });
        this.canvas.title = "Click patches to keep them visible (exposed)";
        this.canvas.addEventListener("pointerdown", (event) => this.click(event));
        this.element.append(bar, this.canvas);
        this.setStatus("");
    }

    setStatus(text) {
        this.status.textContent = text || (this.image ? "click patches to keep them visible" : "no preview yet");
    }

    // Queue this output node alone: the crop without the dub.
    async preview() {
        this.setStatus("running…");
        try {
            await app.queuePrompt(0, 1, [String(this.node.id)]);
        } catch (error) {
            this.setStatus("could not queue the preview");
            console.warn("StableDub: could not queue the preview", error);
        }
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
        canvas.height = Math.max(64, Math.round(rect.height || CANVAS_HEIGHT));
        const ctx = canvas.getContext("2d");
        ctx.clearRect(0, 0, canvas.width, canvas.height);
        const [x0, y0, side] = this.square();
        if (!this.image) {
            ctx.fillStyle = "#888";
            ctx.font = "12px sans-serif";
            ctx.textAlign = "center";
            ctx.fillText("Preview crop (or run the workflow) to see the crop,", canvas.width / 2, canvas.height / 2 - 8);
            ctx.fillText("then click patches to keep them visible", canvas.width / 2, canvas.height / 2 + 10);
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

    setImage(image) {
        this.image = image;
        this.setStatus("");
        this.draw();
        app.graph?.setDirtyCanvas(true, false);
    }

    // The node's UI output: {stabledub_preview: [{filename, subfolder, type}], stabledub_grid,
    // stabledub_union_cells, stabledub_occluder_cells, stabledub_frame}
    show(output) {
        const ref = output?.stabledub_preview?.[0];
        this.union = output?.stabledub_union_cells ?? null;
        this.occluded = output?.stabledub_occluder_cells ?? [];
        const frame = output?.stabledub_frame?.[0];
        if (!ref) return;
        const params = new URLSearchParams({ filename: ref.filename, subfolder: ref.subfolder ?? "", type: ref.type });
        const image = new Image();
        image.onload = () => {
            this.setImage(image);
            this.store(image, frame);
            if (frame !== undefined) this.setStatus(`frame ${frame}: click patches to keep them visible`);
        };
        image.onerror = () => this.setStatus("the preview image could not be loaded");
        image.src = api.apiURL(`/view?${params}&rand=${Math.random()}`);
    }

    // Keep the preview in the node's properties (saved with the workflow): a small JPEG and the cells.
    store(image, frame) {
        let data = null;
        try {
            const side = Math.min(STORED_SIDE, image.naturalWidth || STORED_SIDE);
            const canvas = document.createElement("canvas");
            canvas.width = canvas.height = side;
            canvas.getContext("2d").drawImage(image, 0, 0, side, side);
            data = canvas.toDataURL("image/jpeg", 0.85);
        } catch (error) {
            console.warn("StableDub: the preview could not be kept in the workflow", error);
            return;
        }
        this.node.properties = this.node.properties ?? {};
        this.node.properties[PROPERTY] = { image: data, union: this.union, occluded: this.occluded, frame };
    }

    // The picture of a loaded workflow (from the node's properties), without running anything.
    restore() {
        const kept = this.node.properties?.[PROPERTY];
        if (!kept?.image) return;
        this.union = kept.union ?? null;
        this.occluded = kept.occluded ?? [];
        const image = new Image();
        image.onload = () => {
            this.setImage(image);
            if (kept.frame !== undefined) this.setStatus(`frame ${kept.frame} (saved): click patches`);
        };
        image.src = kept.image;
    }
}

// Grow the node to hold its widgets and the editor (a workflow may store a smaller size): nothing overlaps.
function fitNode(node) {
    const min = node.computeSize?.();
    if (!min) return;
    const width = Math.max(node.size[0], min[0], MIN_WIDTH);
    const height = Math.max(node.size[1], min[1]);
    if (width !== node.size[0] || height !== node.size[1]) node.setSize([width, height]);
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
            const dom = this.addDOMWidget("patch_editor", "stabledub_patch_editor", editor.element, {
                serialize: false, // not in the API prompt: the patches live in the `patches` STRING widget
                getMinHeight: () => CANVAS_HEIGHT + TOOLBAR_HEIGHT,
            });
            if (dom) dom.serialize = false; // not in the workflow's widgets_values either
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
            fitNode(this);
            requestAnimationFrame(() => editor.draw());
            return result;
        };

        const onConfigure = nodeType.prototype.onConfigure;
        nodeType.prototype.onConfigure = function () {
            const result = onConfigure?.apply(this, arguments);
            fitNode(this);
            this.stabledubEditor?.restore();
            requestAnimationFrame(() => this.stabledubEditor?.draw());
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
