"""Train the models of the synthetic world with the real commands: the shipped demo model and the ablation study.

Every step is a ``python -m stabledub_core ...`` command run as a subprocess, exactly as a user would type it; the
commands, their wall times and the machine are written to ``bench/results/train_world_models.json`` after each one,
and a step whose output already exists is skipped (so an interrupted run continues where it stopped).

Data (``--speech`` is the 160-utterance corpus, sorted by file name): the first 140 utterances drive the training
world, the last 20 are held out for ``bench/quality.py``. The training world is 72 avatars (world seed 7), each
speaking one utterance, 30 % of them behind an occluder; it is preprocessed by ``train preprocess --preset tiny``.

Parts:

* ``shipped``: ``train vae`` (700 steps, cosine schedule, the L1 error inside the coarse mouth mask Mc weighted 5x:
  ``--vae-mouth-weight 4``) -> ``init --set prediction_type=v_prediction`` (the stage-1 init: the VAE under a
  v-prediction U-Net) -> ``train stage1`` -> ``train cache-latents`` (one process, two threads) -> ``train stage2``
  -> ``train export``; the VAE and stages 1 and 2 run as 2 processes (``torchrun``, gloo, one thread each), so the
  global batches are twice the per-process ``--batch-size``;
  the export is copied to ``assets/stabledub_tiny_demo.safetensors`` and the recipe (commands, options, seeds, times)
  to ``assets/stabledub_tiny_demo.json``. The budget is at most 60 minutes of training on 2 CPU cores.
* ``sync``: the AV-sync scorer (``train sync`` on the same data) -> ``assets/sync_scorer_world.safetensors``.
* ``ablations``: the paper's ablations, each trained with the shipped model's budget and differing from it in one
  change: ``no_exposure`` (stage 1 without mask exposure, then stage 2), ``attention`` (every Mamba replaced by
  self-attention, made with ``init --set unet.mixer=attention`` from the shipped VAE; stages 1 and 2),
  ``no_habit`` (``habit.enabled=false``) and ``no_temporal`` (``unet.temporal=false``), both stage 2 from the
  shipped stage-1 model (a work folder without the shipped VAE and stage-1 exports rebuilds them from the shipped
  export: :func:`rebuild`).
  ``--variants`` picks some (each records into ``bench/results/train_world_ablations.json``); their exports go to
  ``bench/models/`` as float16. ``bench/models/epsilon/`` keeps the first recipe's full model and its four ablations
  (epsilon prediction, one process, the 250-step VAE, 900 + 1,300 steps), which ``bench/quality.py`` compares with
  each other only.

Usage:
    python bench/train_world_models.py --speech ../shared/media/speech_corpus [--work runs/world]
        [--part shipped|sync|ablations|summary|all] [--variants no_exposure,attention,no_habit,no_temporal]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from stabledub_core.models.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from stabledub_core.models.config import get_preset  # noqa: E402
from stabledub_core.models.stabledub import StableDub  # noqa: E402
from stabledub_core.train.objectives import trainable_names  # noqa: E402

RESULTS = REPO / "bench" / "results" / "train_world_models.json"
ABLATION_RESULTS = REPO / "bench" / "results" / "train_world_ablations.json"
DEMO_MODEL = REPO / "assets" / "stabledub_tiny_demo.safetensors"
DEMO_RECIPE = REPO / "assets" / "stabledub_tiny_demo.json"
SCORER = REPO / "assets" / "sync_scorer_world.safetensors"
ABLATION_MODELS = REPO / "bench" / "models"

TRAIN_UTTERANCES = 140  # the first 140 of the sorted corpus; the rest are held out
WORLD = {"clips": 72, "seed": 7, "occluder_share": 0.3}
SEED = 0
VAE = ["--preset", "tiny", "--max-steps", "700", "--batch-size", "4", "--learning-rate", "1e-3",
       "--lr-warmup-steps", "20", "--lr-scheduler", "cosine", "--vae-mouth-weight", "4"]  # global batch 8
PREDICTION = ["prediction_type=v_prediction"]  # the U-Net's parameterisation (pipeline/prediction.py)
PROCESSES = 2  # training processes of stages 1 and 2 (one per core)
STAGE1_STEPS, STAGE2_STEPS = 900, 2000
STAGE1 = ["--batch-size", "2", "--learning-rate", "5e-4", "--lr-warmup-steps", "50"]  # global batch 4
STAGE2 = ["--batch-size", "1", "--learning-rate", "5e-4", "--lr-warmup-steps", "50", "--latent-cache",
          "--ema-decay", "0.995"]  # global batch 2
SYNC = ["--max-steps", "600", "--batch-size", "32", "--learning-rate", "1e-3", "--lr-warmup-steps", "20"]
# variant -> (init --set of its stage-1 init or None: the shipped stage-1 model, stage-1 options, init --set of its
# stage-2 init)
ABLATIONS = {
    "no_exposure": ([], ["--exposure-start", "0"], []),
    "attention": (["unet.mixer=attention"], [], []),
    "no_habit": (None, [], ["habit.enabled=false"]),
    "no_temporal": (None, [], ["unet.temporal=false"]),
}


class Recipe:
    """Runs commands, records them with their wall times, and updates the results file after each."""

    def __init__(self, work: Path, results: Path = RESULTS):
        self.work, self.path = work, results
        self.results = json.loads(results.read_text()) if results.is_file() else {}
        self.results.setdefault("machine", {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                            "python": platform.python_version(),
                                            "torch_threads": os.environ.get("OMP_NUM_THREADS", "default")})
        self.results.setdefault("steps", {})

    def run(self, name: str, args: list[str], output: Path, processes: int = 1, threads: int = 1) -> None:
        """Run ``python -m stabledub_core ARGS`` (with ``processes`` > 1: under ``torchrun``; ``threads`` torch
        threads per process) unless ``output`` exists; record it under ``name``."""
        launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] \
            if processes > 1 else []
        command = [sys.executable, *launch, "-m", "stabledub_core", *map(str, args)]
        shown = ("python" if processes == 1 else f"torchrun --standalone --nproc-per-node {processes}") + \
            " -m stabledub_core " + " ".join(shlex.quote(str(a)) for a in args)
        if output.exists():
            print(f"[skip] {name}: {output} exists")
            self.results["steps"].setdefault(name, {"command": shown, "seconds": None,
                                                    "note": "done before this run's record was kept"})
            return
        print(f"[run] {name}: {shown}", flush=True)
        started = time.monotonic()
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
        child = subprocess.Popen(command, cwd=REPO, env=env)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource use (its peak memory)
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            raise subprocess.CalledProcessError(child.returncode, command)
        seconds = time.monotonic() - started
        self.results["steps"][name] = {"command": shown, "seconds": round(seconds, 1),
                                       "processes": processes, "threads": threads,
                                       "peak_memory_mb": round(usage.ru_maxrss / 1024, 1),
                                       "load_average": [round(x, 2) for x in os.getloadavg()]}
        self.save()
        print(f"[done] {name}: {seconds:.0f} s", flush=True)

    def save(self) -> None:
        """Merge into the file (another process may be recording other steps into it) and replace it."""
        current = json.loads(self.path.read_text()) if self.path.is_file() else {}
        merged = {**current, **{k: v for k, v in self.results.items() if k != "steps"},
                  "steps": {**current.get("steps", {}), **self.results["steps"]}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(merged, indent=1) + "\n")
        os.replace(tmp, self.path)
        self.results = merged

    def seconds(self, *names: str) -> float:
        return round(sum(self.results["steps"].get(n, {}).get("seconds") or 0.0 for n in names), 1)


def split_speech(corpus: Path, work: Path) -> tuple[Path, Path]:
    """Link the corpus's first :data:`TRAIN_UTTERANCES` files into ``work/speech_train``, the rest into
    ``work/speech_held``."""
    files = sorted(p for p in corpus.iterdir() if p.suffix.lower() == ".wav")
    folders = work / "speech_train", work / "speech_held"
    for folder, part in zip(folders, (files[:TRAIN_UTTERANCES], files[TRAIN_UTTERANCES:])):
        folder.mkdir(parents=True, exist_ok=True)
        for path in part:
            link = folder / path.name
            if not link.exists():
                link.symlink_to(path.resolve())
    return folders


def training_world(recipe: Recipe, corpus: Path) -> Path:
    """The training world (``work/world_train``), rendered from the corpus's training utterances."""
    speech_train, _ = split_speech(corpus, recipe.work)
    world = recipe.work / "world_train"
    recipe.run("world", ["world", world, "--clips", WORLD["clips"], "--speech", speech_train, "--seed",
                         WORLD["seed"], "--occluder-share", WORLD["occluder_share"], "--workers", 2],
               world / "world.json")
    return world


def prepare(recipe: Recipe, corpus: Path) -> Path:
    """The training world and its preprocessed data."""
    world, data = training_world(recipe, corpus), recipe.work / "data"
    recipe.run("preprocess", ["train", "preprocess", world, data, "--preset", "tiny", "--workers", 2],
               data / "manifest.json")
    return data


def train_stage(recipe: Recipe, name: str, stage: str, data: Path, init: Path | None, options: list[str],
                steps: int | None = None, processes: int = 1) -> Path:
    """``train STAGE`` into ``work/NAME`` then ``train export`` to ``work/NAME.safetensors``."""
    run, out = recipe.work / name, recipe.work / f"{name}.safetensors"
    args = ["train", stage, data, "--output", run, "--seed", SEED, "--checkpoint-every", 200, *options]
    if init is not None:
        args += ["--init", init]
    if steps is not None:
        args += ["--max-steps", steps]
    recipe.run(f"{name}_train", args, run / "checkpoints", processes)
    recipe.run(f"{name}_export", ["train", "export", run, "--out", out], out)
    return out


def shipped(recipe: Recipe, data: Path) -> None:
    vae = train_stage(recipe, "vae", "vae", data, None, VAE, processes=PROCESSES)
    init1 = stage1_init(recipe, vae, [])
    stage1 = train_stage(recipe, "stage1", "stage1", data, init1, STAGE1, STAGE1_STEPS, PROCESSES)
    cache_latents(recipe, data, stage1)
    stage2 = train_stage(recipe, "stage2", "stage2", data, stage1, STAGE2, STAGE2_STEPS, PROCESSES)
    DEMO_MODEL.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stage2, DEMO_MODEL)
    names = ("vae_train", "stage1_train", "cache_latents", "stage2_train")
    recipe.results["shipped_training_minutes"] = round(recipe.seconds(*names) / 60, 1)
    recipe.results["shipped_total_minutes"] = round(recipe.seconds(
        *names, "vae_export", "stage1_export", "stage2_export") / 60, 1)
    recipe.save()
    DEMO_RECIPE.write_text(json.dumps({
        "model": DEMO_MODEL.name, "what": "the tiny preset trained on the synthetic world (procedural avatars "
        "speaking real speech), not a model of real faces", "made_by": "python bench/train_world_models.py "
        "--speech ../shared/media/speech_corpus --part shipped", "seed": SEED, "world": WORLD,
        "speech": f"the first {TRAIN_UTTERANCES} files of the sorted speech corpus",
        "commands": [recipe.results["steps"][n]["command"] for n in ("world", "preprocess", "vae_train",
                     "vae_export", "stage1_init", "stage1_train", "stage1_export", "cache_latents", "stage2_train",
                     "stage2_export")],
        "minutes": {n: round(recipe.results["steps"][n]["seconds"] / 60, 1) for n in names},
        "training_minutes": recipe.results["shipped_training_minutes"],
        "machine": recipe.results["machine"], **({"notes": recipe.results["notes"]} if "notes" in recipe.results
                                                 else {})}, indent=1) + "\n")


def cache_latents(recipe: Recipe, data: Path, model: Path) -> None:
    """``train cache-latents`` with ``model``'s VAE (once per work folder; one process on both cores' threads)."""
    done = recipe.work / "cache_latents.done"
    recipe.run("cache_latents", ["train", "cache-latents", data, "--init", model], done, threads=PROCESSES)
    done.touch()


def stage1_init(recipe: Recipe, vae: Path, settings: list[str], name: str = "stage1") -> Path:
    """The trained VAE under a fresh U-Net of the recipe's prediction type (and ``settings``)."""
    out = recipe.work / f"{name}_init.safetensors"
    recipe.run(f"{name}_init", ["init", vae, "--out", out, *_settings(PREDICTION + settings)], out)
    return out


def sync_scorer(recipe: Recipe, data: Path) -> None:
    out = train_stage(recipe, "sync", "sync", data, None, SYNC)
    shutil.copyfile(out, SCORER)


def rebuild(out: Path, stages: tuple[str, ...]) -> None:
    """An intermediate export of the shipped recipe, rebuilt from the shipped export (for ablations in a folder
    without it): ``("vae",)`` for the VAE export, ``("vae", "stage1")`` for stage 1's.

    ``train vae --seed 0`` starts from ``torch.manual_seed(0); StableDub.from_config(tiny)``; the VAE stage trains
    only the VAE, stage 1 only the spatial U-Net (VAE frozen), stage 2 only the temporal layers, audio
    cross-attention, habit and audio encoder. So the export after ``stages`` is the shipped export's tensors of those
    stages with every other tensor at that seeded init."""
    shipped = load_checkpoint(DEMO_MODEL, dtype=torch.float32)
    torch.manual_seed(SEED)
    init = StableDub.from_config(get_preset("tiny")).float().state_dict()
    kept = {name for stage in stages for name in trainable_names(shipped, stage)}
    shipped.load_state_dict({k: v if k in kept else init[k] for k, v in shipped.state_dict().items()})
    save_checkpoint(shipped, out, metadata={"rebuilt_from": DEMO_MODEL.name, "stages": ",".join(stages)})


def ablations(recipe: Recipe, data: Path, variants: list[str]) -> None:
    vae = recipe.work / "vae.safetensors"
    for name, stages in (("vae", ("vae",)), ("stage1", ("vae", "stage1"))):
        if not (recipe.work / f"{name}.safetensors").exists() and DEMO_MODEL.is_file():
            rebuild(recipe.work / f"{name}.safetensors", stages)
    cache_latents(recipe, data, recipe.work / "stage1.safetensors")  # every variant keeps the shipped VAE
    ABLATION_MODELS.mkdir(parents=True, exist_ok=True)
    for variant in variants:
        set1, options1, set2 = ABLATIONS[variant]
        name = f"ablation_{variant}"
        if set1 is None:
            stage1 = recipe.work / "stage1.safetensors"  # the shipped model's stage 1
        else:
            init1 = stage1_init(recipe, vae, set1, f"{name}_stage1")
            stage1 = train_stage(recipe, f"{name}_stage1", "stage1", data, init1, STAGE1 + options1, STAGE1_STEPS,
                                 PROCESSES)
        init2 = stage1
        if set2:
            init2 = recipe.work / f"{name}_init2.safetensors"
            recipe.run(f"{name}_init2", ["init", stage1, "--out", init2, *_settings(set2)], init2)
        stage2 = train_stage(recipe, f"{name}_stage2", "stage2", data, init2, STAGE2, STAGE2_STEPS, PROCESSES)
        store_half(stage2, ABLATION_MODELS / f"{name}.safetensors")
        summarize(recipe)


def store_half(source: Path, target: Path) -> None:
    """Commit-sized copy of a checkpoint: its weights stored as float16 (``bench/quality.py`` loads them as float32)."""
    model = load_checkpoint(source, dtype=torch.float16)
    save_checkpoint(model, target, metadata={"stored_as": "float16", "trained_as": "float32"})


def median_step_seconds(run: Path) -> float | None:
    """The median wall time of one optimizer step of a run (from its ``train_log.csv``): robust to spells when
    another job shared the core."""
    log = run / "train_log.csv"
    if not log.is_file():
        return None
    with log.open() as f:
        elapsed = [float(row["elapsed_s"]) for row in csv.DictReader(f)]
    steps = np.diff(elapsed)
    return round(float(np.median(steps)), 4) if len(steps) else None


def summarize(recipe: Recipe) -> None:
    """Per variant (``full`` = the shipped model): training minutes, median step times, peak memory of its
    stage-1 and stage-2 runs (the shipped model's stage 1 stands in for the variants trained from it)."""
    out = {}
    for variant in ("full", *ABLATIONS):
        names = {"full": ("stage1", "stage2")}.get(variant, (f"ablation_{variant}_stage1", f"ablation_{variant}_stage2"))
        if ABLATIONS.get(variant, (0,))[0] is None:
            names = ("stage1", names[1])
        steps = {**json.loads(RESULTS.read_text()).get("steps", {}), **recipe.results["steps"]}
        entry = {}
        for stage, name in zip(("stage1", "stage2"), names):
            record = steps.get(f"{name}_train", {})
            entry[stage] = {"run": name, "minutes": round(record.get("seconds", float("nan")) / 60, 2),
                            "median_step_s": median_step_seconds(recipe.work / name),
                            "peak_memory_mb": record.get("peak_memory_mb")}
        out[variant] = entry
    recipe.results["variants"] = out
    recipe.save()


def _settings(settings: list[str]) -> list[str]:
    return [arg for setting in settings for arg in ("--set", setting)]


def parse_variants(parser: argparse.ArgumentParser, text: str, choices) -> list[str]:
    """The comma-separated variant names of ``text``; an unknown one is a usage error listing ``choices``."""
    variants = [v for v in text.split(",") if v]
    unknown = sorted(set(variants) - set(choices))
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(choices)}")
    return variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speech", type=Path, required=True, help="the speech corpus folder")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "world", help="working folder")
    parser.add_argument("--part", default="all", choices=("shipped", "sync", "ablations", "summary", "all"))
    parser.add_argument("--variants", default=",".join(ABLATIONS), help="ablations to train (comma-separated)")
    args = parser.parse_args()
    variants = parse_variants(parser, args.variants, ABLATIONS)
    work = args.work.resolve()
    recipe = Recipe(work)
    data = prepare(recipe, args.speech.resolve())
    if args.part in ("shipped", "all"):
        shipped(recipe, data)
    if args.part in ("sync", "all"):
        sync_scorer(recipe, data)
    if args.part in ("ablations", "all"):
        ablations(Recipe(work, ABLATION_RESULTS), data, variants)
    if args.part == "summary":
        summarize(Recipe(work, ABLATION_RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
