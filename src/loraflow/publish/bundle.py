"""The bundle every job ends in: `loraflow-<name>-<id>.zip`, self-describing and checksummed.

LoRA file, metadata.json, the rendered engine config, samples with their prompts and a grid image,
a model card README.md, and SHA256SUMS over all of it. Any kept checkpoint can be bundled, not only
the last, so a user can publish the epoch whose samples they liked.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from PIL import Image

from loraflow import __version__
from loraflow.errors import NotFound, UserInputError
from loraflow.jobs.store import Job, Store
from loraflow.layout import HIGH_NOISE, PAIR_FILE, JobLayout
from loraflow.publish.model_card import render_card
from loraflow.spec import TrainSpec

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "safetensors", "accelerate")


def _versions() -> dict[str, str]:
    out = {"loraflow": __version__}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib_metadata.version(lib)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def collect_samples(samples_dir: Path) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for index in sorted(samples_dir.glob("step-*/index.json")):
        items += json.loads(index.read_text())
    return items


GRID_CELL, GRID_LEFT, GRID_TOP = 256, 96, 44  # image cell, step label column, prompt header (px)


def sample_controls(layout: JobLayout, items: list[dict[str, Any]]) -> dict[str, bytes]:
    """An edit model's samples beside the control images they were made from (`samples/controls/<prompt>_<k>.png`,
    named in each prompt's `controls`), from the prepared dataset (dataset/pairs.py)."""
    manifest = Path(layout.dataset) / "manifest.json"
    rows = json.loads(manifest.read_text(encoding="utf-8")).get("sample_controls") if manifest.is_file() else None
    files: dict[str, bytes] = {}
    for row in rows or []:
        for name in row:
            files[f"samples/controls/{Path(name).name}"] = (Path(layout.dataset) / name).read_bytes()
    for item in items:
        index = int(Path(item["file"]).stem) if Path(item["file"]).stem.isdigit() else None
        if rows and index is not None and index < len(rows):
            item["controls"] = [f"controls/{Path(name).name}" for name in rows[index]]
    return files


def sample_grid(samples_dir: Path, items: list[dict[str, Any]], max_rows: int = 4) -> bytes | None:
    """One row per sample step (the last few), one column per prompt, labelled with the step on the left
    and the prompt on top, so the grid reads on its own in a model card or a notebook."""
    import textwrap

    from PIL import ImageDraw, ImageFont

    if not items:
        return None
    steps = sorted({i["step"] for i in items})[-max_rows:]
    prompts = sorted({i["file"].split("/")[-1] for i in items})
    text_of = {i["file"].split("/")[-1]: str(i.get("prompt") or "") for i in items}
    cell, left, top = GRID_CELL, GRID_LEFT, GRID_TOP
    grid = Image.new("RGB", (left + cell * len(prompts), top + cell * len(steps)), "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=13)
    for c, name in enumerate(prompts):
        lines = textwrap.wrap(text_of[name], 36, max_lines=2, placeholder=" …") or [name]
        draw.multiline_text((left + c * cell + 6, 6), "\n".join(lines), fill="black", font=font, spacing=3)
    for r, step in enumerate(steps):
        draw.text((8, top + r * cell + cell // 2 - 8), f"step {step}", fill="black", font=font)
        for item in (i for i in items if i["step"] == step):
            c = prompts.index(item["file"].split("/")[-1])
            img = Image.open(samples_dir / item["file"]).convert("RGB")
            scale = cell / max(img.size)  # small samples (the tiny model's 64 px) are scaled up too
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
            grid.paste(img, (left + c * cell + (cell - img.width) // 2, top + r * cell + (cell - img.height) // 2))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()


def _events_summary(store: Store, job: Job) -> dict[str, Any]:
    first = store.events(job.id, limit=1)
    started = first[0].ts if first else job.created_at
    return {
        "created_at": job.created_at.isoformat(),
        "finished_at": job.updated_at.isoformat(),
        "duration_s": round((job.updated_at - started).total_seconds(), 1),
    }


def scorecard_files(layout: JobLayout, files: dict[str, bytes]) -> tuple[dict[str, Any] | None, bool]:
    """scorecard.json (without this machine's paths) and its plot into the bundle, when the job was scored."""
    from loraflow.evaluation.plot import scorecard_png
    from loraflow.evaluation.scorecard import read_scorecard

    card = read_scorecard(Path(layout.evaluation))
    if card is None:
        return None, False
    for entry in card.get("checkpoints", []):
        entry.pop("file", None)
    files["scorecard.json"] = (json.dumps(card, indent=2, ensure_ascii=False) + "\n").encode()
    plot = scorecard_png(card)
    if plot:
        files["scorecard.png"] = plot
    return card, plot is not None


def pair_half(spec: TrainSpec, lora_path: Path, lora_name: str, checkpoint_step: int | None) -> dict[str, bytes]:
    """Wan 2.2 A14B's high-noise expert, the other half of the pair: `<name>_high_noise.safetensors` beside the
    final file, `high_noise.safetensors` in a checkpoint that holds a pair. A checkpoint a two-expert job saved
    before its low-noise expert trained holds the high-noise expert alone: refused, as it is not a result."""
    if checkpoint_step is None:
        high = lora_path.with_name(f"{spec.name}{HIGH_NOISE}.safetensors")
    else:
        high = lora_path.with_name(PAIR_FILE)
    if high.is_file():
        return {lora_name.replace(spec.name, f"{spec.name}{HIGH_NOISE}", 1): high.read_bytes()}
    if checkpoint_step is not None and spec.catalog_entry.experts and spec.engine.name == "musubi":
        raise UserInputError(
            f"checkpoint {checkpoint_step} holds only the high-noise expert: the low-noise one had not trained yet",
            fix="pick a later checkpoint (`loraflow jobs show` lists them), or the final pair",
        )
    return {}


def pair_name(files: dict[str, bytes] | list[str]) -> str | None:
    """The high-noise expert's file among a bundle's, when the LoRA is a Wan 2.2 A14B pair."""
    return next((n for n in files if HIGH_NOISE in n and n.endswith(".safetensors") and "/" not in n), None)


def bundle_files(store: Store, job: Job, checkpoint_step: int | None = None) -> dict[str, bytes]:
    layout = JobLayout(str(job.folder))
    spec = job.train_spec
    root = Path(layout.root)
    if checkpoint_step is None:
        lora_path, steps, lora_name = root / f"{spec.name}.safetensors", job.total_steps, f"{spec.name}.safetensors"
    else:
        lora_path = Path(layout.checkpoints) / f"step-{checkpoint_step:06d}" / "lora.safetensors"
        steps, lora_name = checkpoint_step, f"{spec.name}-step{checkpoint_step:06d}.safetensors"
    if not lora_path.is_file():
        raise NotFound(
            f"job {job.id} has no LoRA at {lora_path}",
            fix="list kept checkpoints with `loraflow jobs show` and pick one that exists",
        )
    files: dict[str, bytes] = {lora_name: lora_path.read_bytes()}
    files.update(pair_half(spec, lora_path, lora_name, checkpoint_step))
    samples_dir = Path(layout.samples)
    items = collect_samples(samples_dir)
    for item in items:
        files[f"samples/{item['file']}"] = (samples_dir / item["file"]).read_bytes()
    files.update(sample_controls(layout, items))
    if items:
        files["samples/prompts.json"] = (json.dumps(items, indent=2, ensure_ascii=False) + "\n").encode()
    grid = sample_grid(samples_dir, items)
    if grid:
        files["samples/grid.png"] = grid
    for path in sorted(Path(layout.engine).glob("*")):
        if path.is_file() and not path.name.endswith(".partial"):
            files[f"config/{path.name}"] = path.read_bytes()
    manifest = Path(layout.dataset) / "manifest.json"
    meta = {
        "name": spec.name,
        "job_id": job.id,
        "base_model": spec.base_model,
        "engine": spec.engine.name,
        "steps": steps,
        "total_steps": job.total_steps,
        "final_loss": job.loss,
        "lora_file": lora_name,
        **({"high_noise_file": pair_name(files)} if pair_name(files) else {}),
        "lora_format": spec.output.lora_format,
        "trigger_word": spec.dataset.trigger_word,
        "dataset_hash": job.outputs.dataset_hash,
        "dataset_manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else None,
        "cost_usd": round(job.cost_usd, 4),
        "versions": _versions(),
        "timings": _events_summary(store, job),
        "spec": spec.to_dict(),
    }
    card, plot = scorecard_files(layout, files)
    if card:
        meta["best_checkpoint"] = card.get("best")
    files["metadata.json"] = (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode()
    latest = [i for i in items if i["step"] == max((i["step"] for i in items), default=0)]
    files["README.md"] = render_card(
        spec,
        lora_file=lora_name,
        steps=steps,
        final_loss=job.loss,
        samples=latest,
        grid="samples/grid.png" if grid else None,
        job_id=job.id,
        dataset_hash=job.outputs.dataset_hash,
        scorecard=card,
        scorecard_plot="scorecard.png" if plot else None,
        pair_file=pair_name(files),
    ).encode()
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items()))
    files["SHA256SUMS"] = sums.encode()
    return files


def build_bundle(
    store: Store, job: Job, checkpoint_step: int | None = None, files: dict[str, bytes] | None = None
) -> Path:
    files = files if files is not None else bundle_files(store, job, checkpoint_step)
    folder = Path(JobLayout(str(job.folder)).bundle)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = f"-step{checkpoint_step:06d}" if checkpoint_step is not None else ""
    dest = folder / f"loraflow-{job.name}-{job.id}{suffix}.zip"
    tmp = dest.with_name(dest.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(files.items()):
            kind = zipfile.ZIP_STORED if name.endswith((".safetensors", ".png", ".jpg")) else zipfile.ZIP_DEFLATED
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, compress_type=kind)
    tmp.replace(dest)
    return dest


def verify_bundle(path: Path) -> list[str]:
    """Names whose SHA256SUMS line does not match (empty when the bundle is intact)."""
    bad: list[str] = []
    with zipfile.ZipFile(path) as zf:
        for line in zf.read("SHA256SUMS").decode().splitlines():
            digest, name = line.split("  ", 1)
            if hashlib.sha256(zf.read(name)).hexdigest() != digest:
                bad.append(name)
    return bad
