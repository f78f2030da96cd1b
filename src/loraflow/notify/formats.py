"""What a notification says: the webhook payload for programs, one line of text for people."""

from __future__ import annotations

from typing import Any

from loraflow.jobs.store import Event, Job

# Store event -> webhook event name (None: not sent).
SIMPLE = {
    "job.created": "job.created",
    "stage.started": "stage.started",
    "stage.completed": "stage.completed",
    "progress": "job.progress",
    "checkpoint.saved": "checkpoint.saved",
    "sample.saved": "sample.saved",
    "stall.detected": "job.stalled",
    "job.completed": "job.completed",
    "job.cancelled": "job.cancelled",
    "budget.warning": "budget.warning",
    "result.scored": "result.scored",
}
EVENTS = sorted({*SIMPLE.values(), "job.started", "job.failed"})


def webhook_name(event: Event) -> str | None:
    if event.type == "job.state":
        if event.data.get("to") == "training":
            return "job.started"
        if event.data.get("to") == "failed":
            return "job.failed"
        return None
    return SIMPLE.get(event.type)


def payload(name: str, event: Event, job: Job) -> dict[str, Any]:
    return {
        "id": f"{job.id}-{event.seq}",
        "seq": event.seq,
        "event": name,
        "ts": event.ts.isoformat(),
        "job_id": job.id,
        "name": job.name,
        "state": job.state.value,
        "stage": event.stage,
        "step": event.data.get("step", job.step),
        "total": event.data.get("total", job.total_steps),
        "loss": event.data.get("loss", job.loss),
        "cost_usd": round(job.cost_usd, 4),
        "error": job.error if name == "job.failed" else None,
        "artifacts": {k: v for k, v in job.outputs.to_json().items() if k in ("bundle", "lora", "published")},
        "data": event.data,
    }


def human_text(p: dict[str, Any]) -> str:
    name, job = p["event"], f"**{p['name']}** ({p['job_id']})"
    step = f"step {p['step']}/{p['total']}" if p.get("total") else ""
    loss = f", loss {p['loss']:.4f}" if isinstance(p.get("loss"), (int, float)) else ""
    lines = {
        "job.created": f"{job}: created",
        "job.started": f"{job}: training started",
        "job.progress": f"{job}: {step}{loss}",
        "checkpoint.saved": f"{job}: checkpoint at step {p['data'].get('step')}",
        "sample.saved": f"{job}: sample at step {p['data'].get('step')}: {p['data'].get('prompt', '')}",
        "job.stalled": f"{job}: stalled — {p['data'].get('message', '')}",
        "job.completed": f"{job}: finished ✅ {step}{loss}",
        "job.failed": f"{job}: failed ❌ {p.get('error') or ''}",
        "job.cancelled": f"{job}: cancelled",
        "budget.warning": f"{job}: budget warning — ${p['cost_usd']:.2f} spent",
        "result.scored": f"{job}: scored — {((p['data'].get('best') or {}).get('why') or 'no best checkpoint')}",
    }
    return lines.get(name, f"{job}: {name}")


def chat_body(kind: str, p: dict[str, Any], chat_id: str | None = None) -> dict[str, Any]:
    """Discord, Slack and Telegram each want the text under a different key."""
    text = human_text(p)
    if kind == "discord":
        return {"content": text[:2000], "username": "loraflow"}
    if kind == "slack":
        return {"text": text.replace("**", "*")}
    if kind == "telegram":
        return {"chat_id": chat_id, "text": text.replace("**", ""), "disable_web_page_preview": True}
    return p
