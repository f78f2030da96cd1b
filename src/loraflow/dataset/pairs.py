"""Edit-model datasets: target images paired by name with the control images they were made from.

The user's layout (one folder, `dataset.control` names its control subfolder): `a.jpg` + `a.txt` (the
instruction) at the top, `control/a.png` (one control) or `control/a_0.png`, `control/a_1.png`... (several,
as Qwen-Image-Edit-2509/2511 and FLUX.2 take; musubi's own naming). Every problem is named before anything
is rented: a target without its control, a control whose aspect does not fit its target, a target without
an instruction, a control with no target, more controls than the model takes.

The prepared copy keeps them in hidden folders (ai-toolkit walks the dataset folder and skips hidden ones,
musubi reads only the top level): `.control/<k>/<stem>.<ext>`, one folder per control position (ai-toolkit's
`control_path` list; musubi's `control_directory` when there is one), and for several controls also
`.control/all/<stem>_<k>.<ext>` (musubi's numbered names in one folder).
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from PIL import Image

from loraflow.dataset.sources import Entry
from loraflow.media.findings import Finding, Report, Severity
from loraflow.media.images import DecodedImage, decode

if TYPE_CHECKING:
    from loraflow.spec import TrainSpec

PREPARED = ".control"
ALL = "all"
SAMPLES = "samples"
_NUMBERED = re.compile(r"^(?P<stem>.+)_(?P<n>\d+)$")
# Captions that describe a picture rather than ask for a change: an edit model learns the instruction.
_DESCRIPTIVE = re.compile(r"^\s*(a|an|the)\s+(photo|picture|image|painting|drawing|render)\b|^\s*(this|there)\s+is\b",
                          re.IGNORECASE)
ASPECT_TOLERANCE = 0.10  # a control whose aspect differs more from its target's is stretched by the engines


@dataclass(frozen=True)
class PairNeeds:
    """What a model asks of a paired dataset (from the catalog and the spec)."""

    folder: str  # the control subfolder inside the dataset
    most: int  # most controls per target
    required: bool = True  # every target needs its controls (edit models; FLUX.2 takes them optionally)
    min_resolution: int = 256
    samples: tuple[tuple[str, ...], ...] = ()  # the controls each sample prompt edits, by name in the folder
    prompts: int = 0  # sample prompts (each gets the first pair's controls when `samples` is empty)


@dataclass
class Pairs:
    """The controls found for each target (by the target's path in the source), in order."""

    controls: dict[str, list[Entry]] = field(default_factory=dict)
    samples: list[list[Entry]] = field(default_factory=list)  # per sample prompt
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # control path -> (width, height)


def split_controls(entries: list[Entry], needs: PairNeeds | None) -> tuple[list[Entry], list[Entry]]:
    """The dataset's entries without its control folder, and the control folder's entries."""
    if needs is None:
        return entries, []
    prefix = needs.folder.strip("/") + "/"
    inside = [e for e in entries if e.path.startswith(prefix)]
    return [e for e in entries if not e.path.startswith(prefix)], inside


def control_order(stem: str, path: str) -> int:
    """musubi's order: the unnumbered control first, then by number."""
    name = PurePosixPath(path).stem
    if name == stem:
        return -1
    m = _NUMBERED.match(name)
    return int(m.group("n")) if m else 1 << 30


def _owner(path: str, folder: str, stems: set[str]) -> str | None:
    return owner_stem(str(PurePosixPath(path).relative_to(folder).with_suffix("")), stems)


def owner_stem(name: str, stems: set[str]) -> str | None:
    """The target stem a control (its name without suffix) belongs to: its own stem, or the stem before
    `_<number>` (the web wizard's grid pairs them the same way)."""
    if name in stems:
        return name
    m = _NUMBERED.match(name)
    return m.group("stem") if m and m.group("stem") in stems else None


def _finding(code: str, message: str, fix: str, file: str, severity: Severity = Severity.ERROR) -> Finding:
    return Finding(code, severity, message, fix, file)


def match_pairs(targets: list[tuple[Entry, int, int, str | None]], controls: list[Entry], needs: PairNeeds,
                report: Report, max_pixels: int) -> Pairs:
    """Pair each target (entry, width, height, caption) with its controls and name every problem."""
    folder = needs.folder.strip("/")
    by_stem = {str(PurePosixPath(t[0].path).with_suffix("")): t for t in targets}
    pairs = Pairs()
    pairs.samples = _sample_controls(controls, needs, report)
    for entry in controls:
        owner = _owner(entry.path, folder, set(by_stem))
        if owner is None:
            report.add(_finding("orphan_control", f"control image has no target in the dataset (looked for "
                                f"{PurePosixPath(entry.path).stem.rsplit('_', 1)[0]}.* at the top)",
                                "add its target image with the same name, or delete it", entry.path,
                                Severity.WARNING))
            continue
        pairs.controls.setdefault(by_stem[owner][0].path, []).append(entry)
    for stem, (entry, width, height, caption) in by_stem.items():
        name = PurePosixPath(stem).name
        found = sorted(pairs.controls.get(entry.path, []), key=lambda e, n=name: control_order(n, e.path))
        pairs.controls[entry.path] = found
        if not found and needs.required:
            report.add(_finding("missing_control", "target image has no control image",
                                f"add {folder}/{stem}.png (the image before the edit), or remove the target",
                                entry.path))
        if len(found) > needs.most:
            report.add(_finding("too_many_controls", f"{len(found)} control images; the model takes at most "
                                f"{needs.most}", f"keep {needs.most} of {', '.join(e.path for e in found)}",
                                entry.path))
        if found and not (caption or "").strip():
            report.add(_finding("missing_instruction", "target image has no caption: an edit model learns the "
                                "instruction from it", f"write the edit as its caption, e.g. 'make it night' in "
                                f"{stem}.txt", entry.path))
        elif found and _DESCRIPTIVE.search(caption or ""):
            report.add(_finding("caption_not_instruction", "the caption describes a picture; an edit model's "
                                "caption is the instruction that turns the control into the target",
                                "write it as an edit, e.g. 'make the jacket red'", entry.path, Severity.WARNING))
        for i, control in enumerate(found):
            size = _size(control, report, max_pixels)
            if size is None:
                continue
            pairs.sizes[control.path] = size
            _judge_size(control, size, (width, height), i == 0 and needs.most == 1, needs, report)
    if not needs.samples and needs.prompts:
        first = next((c for c in pairs.controls.values() if c), [])
        pairs.samples = [first] * needs.prompts if first else []
    return pairs


def _sample_controls(controls: list[Entry], needs: PairNeeds, report: Report) -> list[list[Entry]]:
    """The control images the user named for the samples, each found in the control folder or named."""
    folder = needs.folder.strip("/")
    by_name = {str(PurePosixPath(e.path).relative_to(folder)): e for e in controls}
    out = []
    for i, names in enumerate(needs.samples):
        found = []
        for name in names:
            entry = by_name.get(name.strip("/"))
            if entry is None:
                report.add(_finding("sample_control_missing", f"sampling.controls[{i}]: '{name}' is not in the "
                                    f"control folder {folder}/", f"name a file of {folder}/, e.g. "
                                    f"{next(iter(by_name), 'a.png')}", f"{folder}/{name}"))
            else:
                found.append(entry)
        out.append(found)
    return out


def write_sample_controls(out: Path, pairs: Pairs) -> list[list[str]]:
    """Each sample prompt's control images as PNG at `.control/samples/<prompt>_<k>.png` (the engines'
    sample configs name these), by prompt."""
    names = []
    for i, entries in enumerate(pairs.samples):
        row = []
        for k, entry in enumerate(entries):
            name = f"{PREPARED}/{SAMPLES}/{i}_{k}.png"
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            with Image.open(io.BytesIO(entry.read())) as img:
                img.convert("RGB").save(out / name, format="PNG")
            row.append(name)
        names.append(row)
    return names


def _size(entry: Entry, report: Report, max_pixels: int) -> tuple[int, int] | None:
    result = decode(entry.read(), entry.path, max_pixels)
    if isinstance(result, DecodedImage):
        return result.width, result.height
    report.add(result if isinstance(result, Finding) else _finding(
        "control_unreadable", "control image cannot be read", "save it as PNG or JPEG", entry.path))
    return None


def _judge_size(control: Entry, size: tuple[int, int], target: tuple[int, int], same_aspect: bool,
                needs: PairNeeds, report: Report) -> None:
    """One control for the model (Kontext): it must have its target's aspect, or the engine stretches it."""
    if min(size) < needs.min_resolution:
        report.add(_finding("control_too_small", f"control image is {size[0]}x{size[1]}, below "
                            f"{needs.min_resolution} px on its short side", "use the full-size control image",
                            control.path))
    if same_aspect and abs(math.log((size[0] / size[1]) / (target[0] / target[1]))) > math.log1p(ASPECT_TOLERANCE):
        report.add(_finding("control_size_mismatch", f"control is {size[0]}x{size[1]} but its target is "
                            f"{target[0]}x{target[1]} (aspect {size[0] / size[1]:.2f} vs {target[0] / target[1]:.2f})",
                            "crop or pad the control to its target's aspect (the engines resize it to the "
                            "target's size)", control.path))


def prepared_names(stem: str, controls: list[Entry], numbered: bool) -> list[tuple[str, list[str]]]:
    """Where each control of a target goes in the prepared copy (its kept extension): the per-position
    folder, and musubi's numbered name for a model that takes several."""
    out = []
    for k, entry in enumerate(controls, start=1):
        ext = PurePosixPath(entry.path).suffix.lower()
        names = [f"{PREPARED}/{k}/{stem}{ext}"]
        if numbered:
            names.append(f"{PREPARED}/{ALL}/{stem}_{k - 1}{ext}")
        out.append((entry.path, names))
    return out


def pair_needs(spec: TrainSpec) -> PairNeeds | None:
    """What the spec's model asks of its pairs; None for a dataset without a control folder."""
    folder = spec.dataset.control
    if not folder:
        return None
    named, prompts = spec.sampling.controls, len(spec.sampling.prompts)
    rows = [named[0]] * prompts if len(named) == 1 else named
    samples = tuple((row,) if isinstance(row, str) else tuple(row) for row in rows)
    entry = spec.catalog_entry
    return PairNeeds(folder, entry.controls, entry.edit, spec.dataset.checks.min_resolution, samples, prompts)
