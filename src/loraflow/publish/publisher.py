"""Publishing a job: the chosen checkpoint to every target in the spec. Unless the user names one, the
chosen checkpoint is the scorecard's best (docs/scorecard.md), else the final LoRA, and every door says
which and why (`choose_checkpoint`)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from loraflow.jobs.store import Job, Store
from loraflow.layout import HIGH_NOISE
from loraflow.publish.bundle import build_bundle, bundle_files, pair_name

BEST: Literal["best"] = "best"
FINAL: Literal["final"] = "final"
Wanted = int | Literal["best", "final"] | None  # a kept checkpoint's step, the scorecard's best, the final LoRA


@dataclass(frozen=True)
class Choice:
    """Which LoRA a publish takes: `step` is the kept checkpoint's step, None the final LoRA; `why` says so."""

    step: int | None
    why: str


def choose_checkpoint(job: Job, wanted: Wanted = BEST) -> Choice:
    """The LoRA to publish. `best` (every door's default): the scorecard's best checkpoint when the result
    check chose one and it is still kept, else the final LoRA, with the reason; `final` or None: the final
    LoRA; a number: that kept checkpoint, as asked."""
    if isinstance(wanted, int):
        return Choice(wanted, f"step {wanted}, as asked")
    if wanted != BEST:
        return Choice(None, f"the final LoRA (step {job.total_steps}), as asked")
    card = job.outputs.scorecard
    best = (card or {}).get("best") or {}
    if card is None:
        return Choice(None, f"the final LoRA (step {job.total_steps}): the job has no scorecard to choose from")
    if best.get("step") is None:
        return Choice(None, f"the final LoRA (step {job.total_steps}): {best.get('why') or 'no best checkpoint'}")
    step = best.get("checkpoint_step")
    if step is None:
        return Choice(None, f"the final LoRA (step {best['step']}), the scorecard's best: {best.get('why', '')}")
    if not (job.folder / "checkpoints" / f"step-{step:06d}" / "lora.safetensors").is_file():
        return Choice(None, f"the final LoRA (step {job.total_steps}): the scorecard's best, step {step}, "
                            "is no longer kept (its checkpoint was removed)")
    return Choice(step, f"step {step}, the scorecard's best: {best.get('why', '')}")


def publish_job(
    store: Store, job: Job, checkpoint_step: int | None = None, only: str | None = None, chosen: str = ""
) -> list[dict[str, Any]]:
    """Publish and record the results on the job (outputs.published) and as a `published` event.
    `only`: just the spec's targets of that type (`loraflow publish JOB --to comfydeploy`); `chosen`: why
    this checkpoint (`Choice.why`), kept with each result."""
    spec = job.train_spec
    files = bundle_files(store, job, checkpoint_step)
    bundle = build_bundle(store, job, checkpoint_step, files)
    lora_name = next(n for n in files if n.endswith(".safetensors"))
    pair = pair_name(files)  # Wan 2.2 A14B: the high-noise expert's file goes wherever the low-noise one goes
    results: list[dict[str, Any]] = []
    earlier = [p for p in job.outputs.published if p.get("checkpoint_step") == checkpoint_step]
    targets = list(spec.publish.targets)
    if only == "comfydeploy" and not any(t.type == "comfydeploy" for t in targets):
        from loraflow.spec import ComfyDeployTarget

        targets.append(ComfyDeployTarget(type="comfydeploy"))  # a push after the fact, with the defaults
    for target in targets:
        if only is not None and target.type != only:
            continue
        if target.type == "comfydeploy":
            from loraflow.publish.comfydeploy import register, source_url

            url, source = source_url([*earlier, *results], lora_name)
            result = register(url, target.filename or lora_name, target.folder_path, target.wait_s)
            result["source"] = source
            if pair:  # Wan 2.2 A14B: the high-noise expert too, named beside the low-noise one
                url, source = source_url([*earlier, *results], pair)
                name = (target.filename or lora_name).replace(".safetensors", f"{HIGH_NOISE}.safetensors")
                result["high_noise"] = {**register(url, name, target.folder_path, target.wait_s), "source": source}
        elif target.type == "huggingface":
            from loraflow.publish.huggingface import publish_files

            steps = checkpoint_step or job.total_steps
            result = publish_files(
                {k: v for k, v in files.items() if k != "SHA256SUMS"},
                target.repo_id,
                target.private,
                f"loraflow: {spec.name}, {steps} steps (job {job.id})",
            )
        else:
            from loraflow.publish.s3 import publish

            loras = [bundle.parent / name for name in (lora_name, pair) if name]
            with zipfile.ZipFile(bundle) as zf:
                for lora in loras:
                    lora.write_bytes(zf.read(lora.name))
            result = publish(
                bundle,
                loras[0],
                target.bucket,
                f"{target.prefix.strip('/')}/{job.id}".strip("/"),
                target.endpoint_url,
                target.public,
                more=loras[1:],
            )
            result["endpoint_url"] = target.endpoint_url  # (a later comfydeploy target signs its link there)
        result["checkpoint_step"] = checkpoint_step
        if chosen:
            result["chosen"] = chosen
        results.append(result)
        store.append_event(job.id, "published", result)
    previous = store.get(job.id).outputs.published
    store.update_outputs(job.id, published=previous + results, published_bundle=str(Path(bundle)))
    return results


def approve_job(store: Store, job_id: str, wanted: Wanted, by: str) -> list[dict[str, Any]]:
    """Release a job held in awaiting_approval: publish the chosen checkpoint (`best` by default, see
    `choose_checkpoint`) and complete it. The CLI and the API both come through here: a job not held for
    approval is refused (409)."""
    from loraflow.errors import Refused, UserInputError
    from loraflow.jobs.states import JobState

    job = store.get(job_id)
    if job.state is not JobState.AWAITING_APPROVAL:
        raise Refused(409, "conflict", f"job {job_id} is {job.state.value}, not awaiting_approval")
    choice = choose_checkpoint(job, wanted)
    checkpoint = choice.step
    if checkpoint is not None and not (job.folder / "checkpoints" / f"step-{checkpoint:06d}").is_dir():
        raise UserInputError(f"job {job_id} kept no checkpoint at step {checkpoint}", fix="see `jobs show`")
    store.transition(job_id, JobState.FINISHING, data={"approved_checkpoint": checkpoint})
    store.update_outputs(job_id, approved_checkpoint=checkpoint)
    store.append_event(job_id, "job.approved", {"checkpoint": checkpoint, "by": by, "chosen": choice.why})
    results: list[dict[str, Any]] = []
    try:
        if job.train_spec.publish.targets:
            results = publish_job(store, store.get(job_id), checkpoint, chosen=choice.why)
    except Exception as exc:
        store.transition(job_id, JobState.FAILED, error=f"publishing failed: {exc}")
        raise
    store.transition(job_id, JobState.COMPLETED)
    store.append_event(job_id, "job.completed", {"checkpoint": checkpoint})
    from loraflow.notify.notifier import flush_pending

    flush_pending(store, job_id, job.train_spec.notifications)
    return results
