"""Events as sentences for people: the CLI never shows a Python dict, `None` or `0/None`.

`loraflow train`, `jobs attach` and `jobs events` print the same words. An event type this table does not
know (a newer runner, a platform hook) is still shown as words: its fields as `name value`, empty ones left
out, so nothing raw reaches the screen."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

# Shown as the progress bar's fields, or repeated every few seconds: not worth a line of their own.
QUIET = {"progress", "caching", "stage.completed", "checkpoint.synced", "cost", "heartbeat"}


def words(value: Any) -> str:
    """One value as text a person reads: lists joined, dicts as `key value`, floats rounded, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {words(v)}" for k, v in value.items() if v not in (None, "", [], {}))
    if isinstance(value, (list, tuple)):
        return ", ".join(words(v) for v in value)
    return str(value)


def _fields(data: dict[str, Any]) -> str:
    return words({k: v for k, v in data.items() if v not in (None, "", [], {})})


def _lease(d: dict[str, Any]) -> str:
    lease = d.get("lease") if isinstance(d.get("lease"), dict) else d
    gpu = lease.get("gpu_name") or lease.get("gpu") or "a host"
    where = lease.get("provider") or ""
    price = lease.get("price_usd_h") or lease.get("usd_per_hour") or lease.get("rate_usd_h")
    cost = f" at ${float(price):.3f}/h" if isinstance(price, (int, float)) else ""
    instance = f" (instance {lease['instance_id']})" if lease.get("instance_id") else ""
    host = f", {lease['host']}" if lease.get("host") and not instance else ""
    return f"{gpu}{f' on {where}' if where else ''}{cost}{instance}{host}"


def _plain(e_type: str, d: dict[str, Any]) -> str | None:
    match e_type:
        case "job.created":
            engine = f" with {d['engine']}" if d.get("engine") else ""
            return f"job created: {d.get('name') or 'a LoRA'} on {d.get('base_model') or 'its base model'}{engine}"
        case "job.state":
            return f"state: {d.get('from') or 'new'} -> {d.get('to')}"
        case "stage.started":
            return f"stage {d.get('stage')}"
        case "phase":
            return f"trainer: {str(d.get('phase', '')).replace('_', ' ')}"
        case "checkpoint.saved":
            return f"checkpoint at step {d.get('step')}: {d.get('path')}"
        case "sample.saved":
            return f"sample at step {d.get('step')}: {d.get('path')}"
        case "resumed":
            return f"resumed from step {d.get('step')} ({d.get('checkpoint')})"
        case "restart":
            return f"restarting the trainer ({d.get('reason')}), attempt {d.get('attempt')} of {d.get('of')}"
        case "train.launched":
            return f"trainer launched (attempt {d.get('attempt') or 1})"
        case "host.acquired":
            return f"host acquired: {_lease(d)}"
        case "host.released":
            return f"host released: {_lease(d)}"
        case "budget.warning":
            return f"budget: ${float(d.get('usd') or 0):.2f} spent of ${float(d.get('max_usd') or 0):.2f}"
        case "job.completed":
            return "job completed"
        case "job.cancelled":
            return "job cancelled"
        case "published":
            return f"published: {_fields(d)}"
        case "lora.checked":
            verdict = "passes" if d.get("code") == "ok" else str(d.get("code"))
            return f"result check: {d.get('file')} {verdict} ({d.get('message')})"
        case "result":
            return f"trainer finished at step {d.get('step')}: {d.get('lora') or 'its LoRA'}"
        case "result.effect":
            moved = "changes the output" if d.get("ok") else "barely changes the output"
            return f"effect check, {_which(d)}: {moved} (effect {words(d.get('effect'))}){_trigger(d)}"
        case "result.checkpoint":
            parts = [f"{k.replace('_', ' ')} {words(d[k])}" for k in SCORED_SHOWN if d.get(k) is not None]
            return f"scored {_which(d)}: {', '.join(parts)}"
        case "result.scored":
            best = d.get("best") or {}
            if best.get("step") is None:
                return f"best checkpoint: none ({best.get('why') or 'nothing was scored'})"
            return f"best checkpoint: {_which(best)}, of {len(d.get('rows') or [])} scored (loraflow jobs show)"
    return None


SCORED_SHOWN = ("effect", "fit", "similarity", "adherence", "memorization")


def _which(d: dict[str, Any]) -> str:
    return "the final LoRA" if d.get("name") == "final" else f"step {d.get('step')}"


def _trigger(d: dict[str, Any]) -> str:
    share = d.get("trigger_dependence")
    return f"; the trigger carries {float(share):.0%} of it" if isinstance(share, (int, float)) else ""


def describe(e_type: str, d: dict[str, Any]) -> str | None:
    """The line printed for one event (rich markup, values escaped), or None for the quiet kinds."""
    match e_type:
        case "stall.detected":
            return f"[yellow]stall: {escape(words(d.get('message')))} -> {escape(words(d.get('action')))}[/yellow]"
        case "warning":
            return f"[yellow]warning: {escape(words(d.get('message')))}[/yellow]"
        case "dataset.finding":  # which file, then what: "b.jpg: looks almost the same as a.jpg"
            where = f"{d['file']}: " if d.get("file") else ""
            fix = f" Fix: {d['fix']}" if d.get("fix") else ""
            return f"[yellow]dataset: {escape(where + words(d.get('message')) + fix)}[/yellow]"
        case "error":
            hint = f" — {d['hint']}" if d.get("hint") else ""
            return f"[red]error: {escape(words(d.get('message')))}{escape(hint)}[/red]"
        case "log":
            return f"[dim]{escape(words(d.get('message')))}[/dim]"
    if e_type in QUIET:
        return None
    line = _plain(e_type, d)
    if line is None:
        shown = _fields(d)
        line = f"{e_type.replace('.', ' ').replace('_', ' ')}{': ' + shown if shown else ''}"
    return escape(line)
