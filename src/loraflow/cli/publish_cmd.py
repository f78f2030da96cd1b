"""`loraflow publish`, `loraflow jobs approve` and `loraflow notify test`."""

from __future__ import annotations

import json
import os
import time

import typer
from rich.markup import escape

from loraflow.cli.output import console
from loraflow.errors import UserInputError
from loraflow.jobs.store import Store
from loraflow.publish.publisher import BEST, FINAL, Wanted

notify_app = typer.Typer(help="Notifications.", no_args_is_help=True)


CHECKPOINT_HELP = (
    "Which LoRA: best (the scorecard's best checkpoint, else the final LoRA; the default), final, or a kept "
    "checkpoint's step."
)


def wanted_checkpoint(value: str) -> Wanted:
    """`--checkpoint best|final|STEP` as the publish doors take it."""
    text = value.strip().lower()
    if text in (BEST, FINAL):
        return BEST if text == BEST else FINAL
    if text.isdigit():
        return int(text)
    raise UserInputError(f"--checkpoint {value!r} is not best, final or a step number", where="--checkpoint",
                         fix="use --checkpoint best, --checkpoint final or --checkpoint 500 (see `jobs show`)")


def _publish(store: Store, job_id: str, wanted: Wanted, to: str | None = None) -> None:
    from loraflow.running.publishing import publish

    results = publish(store, store.find(job_id).id, wanted, only=to)  # the same checks as the API's
    if results:
        console.print(f"publishing {escape(results[0].get('chosen', ''))}")
    for result in results:
        where = result.get("url") or result.get("path") or ", ".join(
            f["url"] for f in result.get("files", {}).values()
        )
        note = f" ({result['status']})" if result["type"] == "comfydeploy" else ""
        console.print(f"published to {result['type']}: {escape(str(where))}{note}")
    best = (store.find(job_id).outputs.scorecard or {}).get("best") or {}
    published = results[0].get("checkpoint_step") if results else None
    if best.get("step") is not None and best.get("checkpoint_step") != published:
        step = best.get("checkpoint_step")
        how = f"--checkpoint {step}" if step is not None else "--checkpoint final"
        console.print(f"note: the scorecard's best is step {best['step']}; publish it with {how} "
                      "(or --checkpoint best)")


def publish(
    job_id: str = typer.Argument(...),
    checkpoint: str = typer.Option(BEST, "--checkpoint", help=CHECKPOINT_HELP),
    to: str | None = typer.Option(
        None, "--to", help="Only this target type: huggingface, s3 or comfydeploy (the last one registers the "
        "already published LoRA with the ComfyDeploy workspace of COMFY_DEPLOY_API_KEY)."
    ),
) -> None:
    """Publish a job's LoRA (the scorecard's best checkpoint by default) to the spec's Hugging Face / S3 /
    ComfyDeploy targets. It says which checkpoint it published and why."""
    _publish(Store(), job_id, wanted_checkpoint(checkpoint), to)


def approve(
    job_id: str = typer.Argument(...),
    checkpoint: str = typer.Option(BEST, "--checkpoint", help=CHECKPOINT_HELP),
) -> None:
    """Release a job held in awaiting_approval: publish the chosen checkpoint and complete it."""
    from loraflow.publish.publisher import approve_job, choose_checkpoint

    store = Store()
    job = store.find(job_id)
    choice = choose_checkpoint(job, wanted_checkpoint(checkpoint))
    for result in approve_job(store, job.id, FINAL if choice.step is None else choice.step,
                              os.environ.get("USER", "local")):
        console.print(f"published to {escape(str(result.get('url') or result.get('lora_url') or result))}")
    console.print(f"job {job.id} approved: {escape(choice.why)}")


@notify_app.command("test")
def notify_test(
    url: str = typer.Argument(..., help="Receiver URL."),
    kind: str = typer.Option("webhook", "--type", help="webhook, discord, slack or telegram."),
    chat_id: str | None = typer.Option(None, "--chat-id", help="Telegram chat id."),
) -> None:
    """Send a sample (signed, when LORAFLOW_WEBHOOK_SECRET is set) notification to check a receiver."""
    from loraflow.notify.webhooks import deliver, signed_request

    sample = {
        "id": f"test-{int(time.time())}",
        "seq": 0,
        "event": "job.completed",
        "ts": "",
        "job_id": "test",
        "name": "loraflow-test",
        "state": "completed",
        "stage": None,
        "step": 1000,
        "total": 1000,
        "loss": 0.1234,
        "cost_usd": 1.23,
        "error": None,
        "artifacts": {},
        "data": {"test": True},
    }
    body, headers = signed_request(sample, kind, chat_id)
    result = deliver(url, body, headers, attempts=3, base_delay_s=1.0)
    if not result.ok:
        console.print(f"[red]not delivered[/red] after {result.attempts} attempt(s): {escape(str(result.error))}")
        raise typer.Exit(1)
    signed = "signed" if "X-Loraflow-Signature" in headers else "unsigned (set LORAFLOW_WEBHOOK_SECRET to sign)"
    console.print(f"delivered ({result.status}), {signed}: {escape(json.dumps(sample)[:120])}…")
