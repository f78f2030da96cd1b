"""The structural check of one LoRA file: keys, shapes, alpha, finite values, and whether it changes anything.

Rules (docs/result-check.md says why):
- every key belongs to a module the architecture's loaders know (lora_check/keys.py), and every block the
  model has carries the modules the target preset must cover, the same in every block;
- each module has its down and up matrices with matching inner size, and that size is the spec's rank (or
  rank x parts for a kohya module fusing several, as loraflow's conversion writes);
- alpha / rank in the file (a missing alpha means alpha = rank to every loader) is the rendered strength;
- no NaN or Inf;
- the effective update of a module, ||B.A|| x alpha/rank, computed from the small r x r products and
  never by forming B.A, is measured against the Frobenius norm of the base weight it adapts; the file is
  inert when no module's update reaches REL_FLOOR of its layer (an all-zero B gives exactly 0). Without
  the base on this machine an update is judged against ABS_FLOOR instead, and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loraflow.lora_check import keys as K
from loraflow.lora_check.base import BaseWeights
from loraflow.lora_check.diffusers_judge import diffusers_refusal
from loraflow.lora_check.reading import Unreadable, open_tensors

REL_FLOOR = 1e-6  # an update a millionth of its layer's weights: below bf16's and fp16's resolution many times
ABS_FLOOR = 1e-8  # without the base: a millionth of a unit-norm layer's update; a real layer's norm is >= ~1
ALPHA_TOLERANCE = 1e-3
OK, INERT, INVALID = "ok", "lora_inert", "lora_invalid"


@dataclass(frozen=True)
class Expectation:
    """What a job's files must be: the spec as rendered for its engine."""

    arch: str
    rank: int
    alpha: float
    targets: str | list[str]
    geometry: dict[str, int] | None = None  # blocks per stream; None when the model's depth is unknown
    engine: str = "builtin"
    learning_rate: float = 1e-4  # for the hint
    max_grad_norm: float = 1.0


@dataclass
class FileVerdict:
    """One file's verdict: `code` is ok, lora_inert or lora_invalid; `hint` names the likely cause."""

    file: str
    code: str
    message: str
    hint: str = ""
    step: int | None = None
    modules: int = 0
    live_modules: int = 0
    largest_update: float | None = None  # the largest module's update (relative to its layer where judged so)
    judged_against: str = ""
    findings: list[str] = field(default_factory=list)
    note: str = ""  # what was not checked, and why

    @property
    def ok(self) -> bool:
        return self.code == OK

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["findings"] = data["findings"][:8]
        return data


@dataclass
class _Module:
    key: K.ModuleKey
    tensors: dict[str, str] = field(default_factory=dict)  # part -> key in the file


def check_file(path: Path, exp: Expectation, base: BaseWeights | None = None, step: int | None = None) -> FileVerdict:
    """The verdict on one LoRA file (never raises for a bad file: a bad file is a verdict)."""
    name = path.name if step is None else f"checkpoints/step-{step:06d}/{path.name}"
    try:
        with open_tensors(path) as f:
            return _check(f, path, name, exp, base, step)
    except Unreadable as exc:
        return FileVerdict(name, INVALID, str(exc), "the file was cut short or is not safetensors", step)


def _group(f: Any, exp: Expectation) -> tuple[dict[str, _Module], list[str]]:
    modules: dict[str, _Module] = {}
    unknown: list[str] = []
    for key in f.names():
        split = K.split_key(key)
        parsed = K.parse(exp.arch, split[0]) if split else None
        if split is None or parsed is None:
            unknown.append(key)
            continue
        modules.setdefault(split[0], _Module(parsed)).tensors[split[1]] = key
    return modules, unknown


def _coverage(modules: dict[str, _Module], exp: Expectation) -> list[str]:
    """Missing blocks, missing required modules, blocks beyond the model's depth, uneven blocks."""
    found: dict[str, dict[str, set[str]]] = {}
    for m in modules.values():
        found.setdefault(m.key.stream, {}).setdefault(m.key.block, set()).update(m.key.covers)
    problems: list[str] = []
    blocks = K.expected_blocks(exp.arch, exp.geometry)
    for stream, names in blocks.items():
        extra = sorted(set(found.get(stream, {})) - set(names))
        if extra and stream != "unet":
            problems.append(f"{stream} block {extra[0]} is beyond the model's {len(names)} {stream} blocks")
    for stream, need in K.required(exp.arch, exp.targets).items():
        have = found.get(stream, {})
        names = blocks.get(stream) or sorted(have, key=_block_order)
        if not names:
            problems.append(f"no {stream} block is adapted (targets {exp.targets!r} need {', '.join(need[:3])}...)")
            continue
        short = [(b, [n for n in need if n not in have.get(b, set())]) for b in names]
        short = [(b, missing) for b, missing in short if missing]
        if short:
            block, missing = short[0]
            problems.append(
                f"{len(short)} of {len(names)} {stream} blocks lack modules targets {exp.targets!r} adapt "
                f"(block {block}: {', '.join(missing[:4])})"
            )
    for stream, per_block in found.items():
        union = set().union(*per_block.values())
        uneven = [b for b, kinds in per_block.items() if kinds != union]
        if uneven and stream not in ("te1", "te2", "unet_proj"):
            block = min(uneven, key=_block_order)
            lacking = ", ".join(sorted(union - per_block[block])[:4])
            problems.append(f"{len(uneven)} {stream} blocks lack modules others have (block {block}: {lacking})")
    return problems


def _block_order(block: str) -> tuple[int, str]:
    return (int(block), "") if block.isdigit() else (0, block)


def _kohya_flux(exp: Expectation, modules: dict[str, _Module]) -> bool:
    return K.rules_for(exp.arch) == "flux" and any(stem.startswith("lora_unet_") for stem in modules)


def _flux_width(f: Any, modules: dict[str, _Module]) -> int | None:
    """The model width a Flux file was trained at: what a double block's image attention takes in."""
    for stem, m in modules.items():
        if stem.endswith(("_img_attn_qkv", ".attn.to_q")) and "down" in m.tensors:
            return int(f.shape(m.tensors["down"])[1])
    return None


def _check(
    f: Any, path: Path, name: str, exp: Expectation, base: BaseWeights | None, step: int | None
) -> FileVerdict:
    modules, unknown = _group(f, exp)
    verdict = FileVerdict(name, OK, "", step=step, modules=len(modules))
    verdict.judged_against = f"base weights ({base.where})" if base else "an absolute floor (no base weights here)"
    if unknown:
        verdict.findings.append(f"{len(unknown)} keys no {exp.arch} loader knows, e.g. {unknown[0]}")
    if K.rules_for(exp.arch) is None:
        verdict.note = f"no key rules for {exp.arch}: names not checked, shapes, values and updates were"
    if not modules:
        return _invalid(verdict, "the file holds no LoRA module of this architecture", exp)
    verdict.findings += _coverage(modules, exp)
    nan_modules = 0
    largest = 0.0
    expected_scale = exp.alpha / exp.rank
    metadata = f.metadata()
    for key in ("ss_network_dim", "loraflow.rank"):
        if key in metadata and metadata[key] not in (str(exp.rank), str(float(exp.rank))):
            verdict.findings.append(f"metadata {key}={metadata[key]} but the spec's rank is {exp.rank}")
    for key in ("ss_network_alpha", "loraflow.alpha"):
        if key in metadata and _number(metadata[key]) not in (None, float(exp.alpha)):
            verdict.findings.append(f"metadata {key}={metadata[key]} but the rendered alpha is {exp.alpha:g}")
    for stem, m in modules.items():
        if "down" not in m.tensors or "up" not in m.tensors:
            verdict.findings.append(f"{stem} lacks its {'up' if 'down' in m.tensors else 'down'} matrix")
            continue
        down_shape, up_shape = f.shape(m.tensors["down"]), f.shape(m.tensors["up"])
        if len(down_shape) != 2 or len(up_shape) != 2 or down_shape[0] != up_shape[1]:
            verdict.findings.append(f"{stem}: down {down_shape} and up {up_shape} do not multiply")
            continue
        r = down_shape[0]
        if r not in (exp.rank, exp.rank * len(m.key.covers)):
            verdict.findings.append(f"{stem}: rank {r}, the spec's rank is {exp.rank}")
        down, up = f.get(m.tensors["down"]), f.get(m.tensors["up"])
        scale = 1.0
        if "alpha" in m.tensors:
            scale = float(np.asarray(f.get(m.tensors["alpha"])).reshape(-1)[0]) / r
        if not math.isclose(scale, expected_scale, rel_tol=ALPHA_TOLERANCE):
            recorded = "no alpha (loaders use alpha = rank)" if "alpha" not in m.tensors else f"alpha {scale * r:g}"
            verdict.findings.append(
                f"{stem}: {recorded} for rank {r} gives strength {scale:g}; rendered: alpha {exp.alpha:g} / rank "
                f"{exp.rank} = {expected_scale:g}"
            )
        if not (np.isfinite(down).all() and np.isfinite(up).all()):
            nan_modules += 1
            continue
        update = _update_norm(down, up) * abs(scale)
        layer = base.norm(m.key.base_keys) if base else None
        size = update / layer if layer else update
        floor = REL_FLOOR if layer else ABS_FLOOR
        largest = max(largest, size)
        if size >= floor:
            verdict.live_modules += 1
    verdict.largest_update = largest
    if nan_modules:
        what = "every module" if nan_modules == len(modules) else f"{nan_modules} of {len(modules)} modules"
        verdict.findings.insert(0, f"NaN or Inf values in {what}")
        return _invalid(verdict, f"NaN or Inf values in {what}", exp, nan=nan_modules == len(modules))
    if not verdict.findings:
        refusal, note = diffusers_refusal(path, _kohya_flux(exp, modules), _flux_width(f, modules))
        verdict.note = "; ".join(n for n in (verdict.note, note) if n)
        if refusal:
            verdict.findings.append(refusal)
    if verdict.findings:
        return _invalid(verdict, verdict.findings[0], exp)
    if verdict.live_modules == 0:
        verdict.code = INERT
        floor = f"{REL_FLOOR:g} of its base layer's norm" if base else f"the absolute floor {ABS_FLOOR:g}"
        verdict.message = (
            f"the LoRA changes nothing: no module's update ||B·A||·alpha/rank reaches {floor} "
            f"(largest {largest:.3g}; judged against {verdict.judged_against})"
        )
        verdict.hint = inert_hint(exp, largest)
        return verdict
    verdict.message = f"{verdict.live_modules} of {verdict.modules} modules change their layers"
    return verdict


def _update_norm(down: np.ndarray, up: np.ndarray) -> float:
    """||up @ down||_F from the r x r products: trace((UᵀU)(DDᵀ)); cheap for any layer width."""
    d, u = down.astype(np.float64), up.astype(np.float64)
    return math.sqrt(max(float(np.sum((u.T @ u) * (d @ d.T))), 0.0))


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _invalid(verdict: FileVerdict, message: str, exp: Expectation, nan: bool = False) -> FileVerdict:
    verdict.code, verdict.message = INVALID, message
    if nan:
        verdict.hint = (
            "all-NaN: training diverged (the loss went NaN or Inf); lower training.learning_rate, keep "
            "training.max_grad_norm above 0, or train in bf16/fp32 rather than fp16"
        )
    elif " lack" in message or message.startswith("no ") or "beyond the model" in message:
        verdict.hint = (
            f"absent targets: the engine did not adapt every module network.targets ({exp.targets!r}) names; "
            "check the engine's version and its rendered network settings"
        )
    elif "strength" in message or "metadata" in message:
        verdict.hint = "alpha or rank recorded in the file differ from the spec's network.rank / network.alpha"
    else:
        verdict.hint = "the file does not match the architecture's LoRA keys or the spec's rank"
    return verdict


def inert_hint(exp: Expectation, largest: float) -> str:
    """The likely causes of an inert LoRA, the spec's own first."""
    causes = []
    if exp.learning_rate < 1e-7:
        causes.append(
            f"training.learning_rate {exp.learning_rate:g} is too small to move the weights (zero learning rate)"
        )
    if exp.max_grad_norm == 0 and exp.engine == "ai-toolkit":
        causes.append("training.max_grad_norm: 0 makes ai-toolkit clip every gradient to zero (gradient clipping at 0)")
    if largest == 0.0:
        causes.append("every B (up) matrix is still zero, as initialised: the optimizer never changed them (frozen or "
                      "absent targets, a zero learning rate or gradients clipped to 0)")
    else:
        causes.append(
            "the updates are orders of magnitude below the layers they adapt: raise the learning rate or steps"
        )
    return "; ".join(causes)
