"""The result check, start to end: load the base once, render the base's baseline, then for each LoRA file
render with and without its trigger, measure the effect, score the samples and write scorecard.json.

Events (`LORAFLOW {json}` lines, as the trainer prints) tell the runner what happens: `eval.phase`,
`eval.effect` per LoRA, `eval.scored` per LoRA, and `eval.done` with the best checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from loraflow.evaluation import metrics
from loraflow.evaluation.config import EvalConfig, LoraUnderTest, without_trigger
from loraflow.evaluation.encoders import ImageEncoder, TextImageScorer
from loraflow.evaluation.render import Render, Renderer
from loraflow.evaluation.scorecard import SCORECARD, choose
from loraflow.trainer.components import FluxParts, load_flux, pick_device
from loraflow.trainer.events import emit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
UNDER_TEST = "under_test"  # the adapter name each LoRA file is loaded under


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def captioned(folder: Path) -> list[tuple[Path, str]]:
    """(image, caption) from a prepared folder's manifest.json; images alone (no caption) without one."""
    try:
        files = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["files"]
        return [(folder / f["name"], f.get("caption") or "") for f in files]
    except (OSError, ValueError, KeyError):
        return [(p, "") for p in images_in(folder)]


class Evaluation:
    """One evaluation run: the loaded base, the encoders, the baseline renders and the reference embeddings."""

    def __init__(self, cfg: EvalConfig, parts: FluxParts | None = None) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        emit("eval.phase", phase="loading_model", device=str(self.device), loaded=parts is not None)
        parts = parts if parts is not None else load_flux(cfg.model_path, self.device, cfg.precision)
        self.renderer = Renderer(parts, width=cfg.width, height=cfg.height, steps=cfg.steps,
                                 guidance=cfg.guidance, max_sequence_length=cfg.max_sequence_length)
        self.encoder = ImageEncoder(cfg.image_encoder, self.device)
        self.scorer = TextImageScorer(cfg.clip_model, self.device)
        self.face = None
        if cfg.face_model:
            from loraflow.evaluation.face import FaceEmbedder

            self.face = FaceEmbedder(cfg.face_model)
        self.prompts = cfg.prompts
        self.bare = [without_trigger(p, cfg.trigger_word) for p in self.prompts]
        emit("eval.phase", phase="references")
        refs = [self.renderer.round_trip(p) for p in images_in(Path(cfg.reference_dir))]
        train = [self.renderer.round_trip(p) for p in images_in(Path(cfg.training_dir))]
        self.references = self.encoder.embed(refs)
        self.training = self.references if cfg.training_dir == cfg.reference_dir else self.encoder.embed(train)
        self.training_names = [p.name for p in images_in(Path(cfg.training_dir))]
        self.face_refs = self.face.embed(refs) if self.face else None
        self.reference_items = captioned(Path(cfg.reference_dir))
        emit("eval.phase", phase="baseline")
        self.base, self.base_bare = self._renders()
        self.baseline = self._sample_scores(self.base)
        self.baseline["held_out_loss"] = round(self.renderer.held_out_loss(self.reference_items), 5)

    def _renders(self) -> tuple[list[Render], list[Render]]:
        """The prompts' renders and, with a trigger word, the same prompts' without it: all in the fewest
        pipeline calls (Renderer.render_all batches them)."""
        both = self.prompts + (self.bare if self.cfg.trigger_word else [])
        renders = self.renderer.render_all(both, self.cfg.seeds)
        n = len(self.prompts) * len(self.cfg.seeds)
        return renders[:n], renders[n:]

    def _sample_scores(self, renders: list[Render]) -> dict[str, Any]:
        images = [r.image for r in renders]
        emb = self.encoder.embed(images)
        texts = [without_trigger(r.prompt, self.cfg.trigger_word) for r in renders]
        adherence = self.scorer.scores(texts, images)
        nearest, which = metrics.closest(emb, self.training)
        out: dict[str, Any] = {
            "similarity": round(metrics.mean_similarity(emb, self.references), 4),
            "adherence": round(sum(adherence) / len(adherence), 4) if adherence else 0.0,
            "memorization": round(nearest, 4),
            "closest_training_image": self.training_names[which] if which >= 0 else None,
        }
        if self.face is not None and self.face_refs is not None:
            out["face_identity"] = round(metrics.mean_similarity(self.face.embed(images), self.face_refs), 4)
        return out

    def check(self, lora: LoraUnderTest, samples_dir: Path) -> dict[str, Any]:
        """The effect check and scorecard entry of one LoRA file."""
        cfg = self.cfg
        self.renderer.load_lora(lora.path, UNDER_TEST)  # the next file swaps in; evaluate takes it off at the end
        with_lora, bare = self._renders()
        loss = self.renderer.held_out_loss(self.reference_items)
        effect = metrics.mean_distance(with_lora, self.base)
        entry: dict[str, Any] = {"name": lora.name, "step": lora.step, "file": lora.path,
                                 "checkpoint_step": None if lora.name == "final" else lora.step,
                                 "effect": round(effect, 4), "effect_ok": effect >= cfg.min_effect}
        if cfg.trigger_word:
            without = metrics.mean_distance(bare, self.base_bare)
            entry["effect_without_trigger"] = round(without, 4)
            entry["trigger_dependence"] = round(metrics.trigger_dependence(effect, without), 4)
            entry["trigger_ok"] = entry["trigger_dependence"] >= cfg.min_trigger
        emit("eval.effect", name=lora.name, step=lora.step, effect=entry["effect"], ok=entry["effect_ok"],
             trigger_dependence=entry.get("trigger_dependence"))
        entry.update(self._sample_scores(with_lora))
        entry["held_out_loss"] = round(loss, 5)
        base_loss = self.baseline["held_out_loss"]
        entry["fit"] = round(1.0 - loss / base_loss, 5) if base_loss > 0 else 0.0
        entry["memorized"] = entry["memorization"] >= cfg.memorization
        folder = samples_dir / lora.name
        folder.mkdir(parents=True, exist_ok=True)
        for i, r in enumerate(with_lora):
            r.image.save(folder / f"{i:02d}.png")
        entry["samples"] = [f"{lora.name}/{i:02d}.png" for i in range(len(with_lora))]
        emit("eval.scored", **{k: v for k, v in entry.items() if k not in ("file", "samples")})
        return entry


def evaluate(cfg: EvalConfig, parts: FluxParts | None = None) -> dict[str, Any]:
    """Run the whole check and write `<out_dir>/scorecard.json`; returns the scorecard. `parts`: the base
    model already loaded in this process (the builtin trainer's, evaluation/after_training.py), with no
    adapter on it; None loads it from `cfg.model_path`."""
    started = time.monotonic()
    torch.manual_seed(0)
    out = Path(cfg.out_dir)
    run = Evaluation(cfg, parts)
    base_s = time.monotonic() - started
    entries = []
    try:
        for lora in cfg.loras:
            emit("eval.phase", phase="checking", name=lora.name)
            entries.append(run.check(lora, out / "samples"))
    finally:
        run.renderer.unload_lora(UNDER_TEST)
    card: dict[str, Any] = {
        "version": 1,
        "job_id": cfg.job_id,
        "trigger_word": cfg.trigger_word,
        "reference": cfg.reference_kind,
        "reference_images": len(run.references),
        "training_images": len(run.training),
        "encoders": {"image": cfg.image_encoder, "text_image": cfg.clip_model, "face": bool(cfg.face_model)},
        "settings": {"prompts": cfg.prompts, "seeds": cfg.seeds, "width": cfg.width, "height": cfg.height,
                     "steps": cfg.steps, "min_effect": cfg.min_effect, "min_trigger": cfg.min_trigger,
                     "memorization": cfg.memorization},
        "baseline": run.baseline,
        "checkpoints": sorted(entries, key=lambda e: (e["step"], e["name"] == "final")),
    }
    card["best"] = choose(card)
    delivered = next((e for e in entries if e["name"] == "final"), entries[-1] if entries else None)
    card["effect_check"] = effect_verdict(delivered, cfg)
    card["timings"] = {"load_and_baseline_s": round(base_s, 2), "total_s": round(time.monotonic() - started, 2),
                       "model_already_loaded": parts is not None}
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (SCORECARD + ".partial")
    tmp.write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(out / SCORECARD)
    emit("eval.done", best=card["best"], effect_check=card["effect_check"], total_s=card["timings"]["total_s"])
    return card


def effect_verdict(entry: dict[str, Any] | None, cfg: EvalConfig) -> dict[str, Any]:
    """Whether the delivered LoRA works: it must change the output; with a trigger word the trigger must matter."""
    if entry is None:
        return {"passed": False, "code": "lora_inert", "message": "no LoRA file to check"}
    if not entry["effect_ok"]:
        return {"passed": False, "code": "lora_inert", "name": entry["name"],
                "message": f"the LoRA barely changes the output: relative latent distance {entry['effect']:.4f} "
                           f"below {cfg.min_effect} (same prompts and seeds with and without it)"}
    if cfg.trigger_word and not entry.get("trigger_ok", True):
        return {"passed": not cfg.require_trigger, "code": "trigger_ignored", "name": entry["name"],
                "message": f"the trigger word {cfg.trigger_word!r} carries only {entry['trigger_dependence']:.0%} of "
                           f"the LoRA's effect (below {cfg.min_trigger:.0%}): it works with or without it"}
    return {"passed": True, "code": None, "name": entry["name"],
            "message": f"the LoRA changes the output (effect {entry['effect']:.3f})"
            + (f"; the trigger carries {entry['trigger_dependence']:.0%} of it" if cfg.trigger_word else "")}
