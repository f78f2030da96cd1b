"""The stages around training: prepare the dataset, render the engine's config, acquire the place,
package the bundle, publish it. Each checks what is already done, so a runner started again after a
crash carries on where the last one was (the train stage is running/training.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from loraflow.errors import UserInputError
from loraflow.jobs.states import JobState
from loraflow.running.context import JobFailed, RunContext


class StageBase:
    """The usual answers: a stage is done once the record says so; a stop is honoured before it; it needs
    the trainer's place; a SIGTERM may end it anywhere."""

    name = ""
    state = JobState.PREPARING
    stop_point = True
    needs_place = True
    interruptible = True

    def done(self, ctx: RunContext) -> bool:
        return self.name in ctx.job.stages_done


class Prepare(StageBase):
    name = "prepare"
    state = JobState.PREPARING

    def run(self, ctx: RunContext) -> JobState | None:
        from loraflow.dataset import DatasetRun, pair_needs
        from loraflow.engines.musubi import video_needs

        dataset = Path(ctx.layout.dataset)
        if dataset.exists() and not (dataset / "manifest.json").exists():
            shutil.rmtree(dataset)  # a prepare cut short: do it again
        if dataset.exists():  # prepared by an earlier runner; finish a hold-out it was cut short in
            if not Path(ctx.layout.holdout, "manifest.json").exists():
                from loraflow.dataset.manifest import read_manifest

                held, digest = hold_out_images(ctx, len(read_manifest(dataset)["files"]))
                if digest:
                    ctx.store.update_outputs(ctx.job_id, dataset_hash=digest, holdout=held)
            return None
        d = ctx.spec.dataset
        policy = d.captions
        if ctx.place.captions_on_host():  # captioned on the GPU host
            policy = policy.model_copy(update={"backend": "existing"})
        clips = video_needs(ctx.spec)  # musubi's clips are prepared with the images
        pairs = pair_needs(ctx.spec)  # an edit model's control images, matched to the targets by name
        run = DatasetRun(d.path, d.checks, policy, d.trigger_word, d.caption_extension, clips, pairs)
        report = run.prepare(dataset)
        for finding in report.findings:
            if finding.severity.value != "info":
                ctx.store.append_event(ctx.job_id, "dataset.finding", finding.to_dict())
        if report.output is None:
            lines = "; ".join(f.line() for f in report.errors)
            raise UserInputError(
                f"the dataset is not fit to train: {lines}",
                fix="run `loraflow dataset check` on it and fix the errors",
            )
        held, digest = hold_out_images(ctx, report.usable_images)
        ctx.store.update_outputs(ctx.job_id, dataset_hash=digest or report.dataset_hash,
                                 images=report.usable_images - len(held), holdout=held)
        return None


def hold_out_images(ctx: RunContext, usable: int) -> tuple[list[str], str | None]:
    """evaluation.holdout: move a few prepared images out of training (docs/scorecard.md)."""
    from loraflow.dataset.holdout import hold_out, holdout_count
    from loraflow.evaluation.plan import checks_effect
    from loraflow.running.scoring import scores_somewhere

    scored = checks_effect(ctx.spec) and scores_somewhere(ctx)
    count = holdout_count(ctx.spec.evaluation.holdout, usable) if scored else 0
    return hold_out(Path(ctx.layout.dataset), Path(ctx.layout.holdout), count)


class Render(StageBase):
    name = "render"
    state = JobState.PREPARING

    def run(self, ctx: RunContext) -> JobState | None:
        spec = ctx.spec
        if ctx.engine.name == "builtin" and ctx.place.builds_model_here():
            from loraflow.trainer.model_source import resolve_model_path

            model = str(resolve_model_path(spec))
        else:  # external engines fetch hub models themselves; a local folder is passed as it is
            entry = spec.catalog_entry
            model = entry.hub_id if spec.base_model == entry.id and entry.hub_id else spec.base_model
        files = ctx.engine.render(spec, ctx.layout, ctx.job_id, model, ctx.refresh().outputs.dataset_hash)
        engine_dir = Path(ctx.layout.engine)
        engine_dir.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            tmp = engine_dir / (name + ".partial")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(engine_dir / name)
        return None


class Acquire(StageBase):
    name = "acquire"
    state = JobState.PROVISIONING

    def done(self, ctx: RunContext) -> bool:
        return ctx.place.acquired(ctx.job)

    def run(self, ctx: RunContext) -> JobState | None:
        outputs = ctx.job.outputs
        ctx.place.acquire(outputs.force_budget, outputs.dataset_hash)
        return None


class Package(StageBase):
    name = "package"
    state = JobState.FINISHING
    stop_point = False
    needs_place = False

    def run(self, ctx: RunContext) -> JobState | None:
        from loraflow.publish.bundle import build_bundle
        bundle = build_bundle(ctx.store, ctx.refresh())
        ctx.store.update_outputs(ctx.job_id, bundle=str(bundle))
        return None


class Publish(StageBase):
    name = "publish"
    state = JobState.FINISHING
    stop_point = False
    needs_place = False

    def done(self, ctx: RunContext) -> bool:
        return not ctx.spec.publish.targets or self.name in ctx.job.stages_done

    def run(self, ctx: RunContext) -> JobState | None:
        from loraflow.publish.publisher import choose_checkpoint, publish_job

        job = ctx.refresh()
        choice = choose_checkpoint(job)  # the scorecard's best, else the final LoRA
        try:
            publish_job(ctx.store, job, choice.step, chosen=choice.why)
        except UserInputError as exc:  # the target as written is wrong
            raise UserInputError(f"publishing failed: {exc.message}", fix=exc.fix or _republish(ctx)) from exc
        except Exception as exc:  # the service failed, not the user's input: say which, keep the LoRA
            code = "publish_unreachable" if _unreachable(exc) else "publish_failed"
            what = "the publish target did not answer" if code == "publish_unreachable" else "publishing failed"
            raise JobFailed(f"{what}: {type(exc).__name__}: {exc}", _republish(ctx), code) from exc
        return None


def _republish(ctx: RunContext) -> str:
    """The failed job's way on: a resume runs only the publish stage again (nothing is retrained) and
    completes the job; `loraflow publish` takes completed jobs only."""
    return f"the trained LoRA is kept; once the target works, run `loraflow jobs resume {ctx.job_id}` to publish it"


def _unreachable(exc: BaseException) -> bool:
    """A connection that failed, timed out or was reset (an outage), as boto3, httpx or huggingface_hub report
    it: anywhere in the chain (botocore's ConnectionClosedError wraps urllib3's ProtocolError, which wraps
    the reset)."""
    outage = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectError",
              "ConnectTimeout", "ReadTimeout", "ConnectionError", "ConnectionRefusedError", "ConnectionResetError",
              "ConnectionClosedError", "RemoteProtocolError")
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if type(link).__name__ in outage or isinstance(link, (ConnectionError, TimeoutError)):
            return True
        link = link.__cause__ or link.__context__
    return False
