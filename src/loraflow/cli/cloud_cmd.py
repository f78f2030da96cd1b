"""`loraflow estimate`, `offers`, `instances` and `reap`: money and machines before and after a job."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table

from loraflow.cli.output import console, print_json, waiting
from loraflow.errors import UserInputError
from loraflow.spec import TrainSpec, load_spec

if TYPE_CHECKING:
    from loraflow.providers.base import Provider, RankedOffer, Rented
    from loraflow.providers.vastai import VastProvider


def _quick_vast() -> VastProvider:
    """For read-only questions a person waits on: two tries of 10 s, then a message naming the host
    (renting and destroying keep the client's patient retries)."""
    from loraflow.engines import engine_needs
    from loraflow.providers.vast_client import VastClient
    from loraflow.providers.vastai import VastProvider

    return VastProvider(VastClient(tries=2, timeout_s=10), needs=engine_needs)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}"


def estimate(
    spec_path: Path = typer.Argument(..., help="The training spec (YAML)."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Predicted time and cost per GPU type on offer, with its parts, before anything is rented. A rented
    job is priced on every provider side by side (Vast.ai, RunPod, ...), the spec's own first."""
    from loraflow.providers.estimate import local_estimate
    from loraflow.providers.registry import is_rented

    spec = load_spec(spec_path)
    if spec.engine.name == "fal":
        _hosted_estimate(spec, as_json)
        return
    notes: dict[str, str] = {}
    if is_rented(spec.compute.provider):
        from loraflow.engines import engine_needs
        from loraflow.providers.compare import compare

        with waiting("asking each provider for offers that fit this job (retried if one does not answer)..."):
            found = compare(spec, engine_needs)
        rows = [(f.title, r.estimate) for f in found for r in f.best]
        notes = {f.title: f.note for f in found if f.note}
        if not rows:  # nobody could price it: the spec's own provider's reason, as the error
            raise next(f.error for f in found if f.provider == spec.compute.provider)  # type: ignore[misc]
    else:
        rows = [("this machine", local_estimate(spec))]
    data = [{"provider": who, **r.to_dict()} for who, r in rows]
    cap = spec.budget.max_usd
    if as_json:
        print_json({"budget_usd": cap, "estimates": data, "unpriced": notes})
        return
    # At 80 columns the phases fold into "steps" and "other"; a wide terminal shows each phase.
    wide = ("setup_s", "caching_s", "steps_s", "samples_s", "transfer_s", "check_s")  # check: the result check
    phases = wide if console.width >= 100 else ("steps_s",)
    table = Table(title=f"estimate for {escape(spec.name)} ({spec.training.steps} steps)")
    heads = [p.removesuffix("_s").replace("caching", "cache") for p in phases]
    if len(phases) == 1:
        heads.append("other")
    rented = is_rented(spec.compute.provider)
    for col in ("provider", "GPU", "$/h", *heads, "total min", "cost $")[0 if rented else 1 :]:
        table.add_column(col, justify="left" if col in ("GPU", "provider") else "right", no_wrap=col != "GPU")
    for r in data:
        over = cap is not None and r["cost_usd"] > cap
        cells = [_minutes(r[k]) for k in phases]
        if len(phases) == 1:
            cells.append(_minutes(r["total_s"] - r["steps_s"]))
        table.add_row(
            *([escape(r["provider"])] if rented else []),
            escape(f"{r['gpus']}x {r['gpu']}" if r["gpus"] > 1 else r["gpu"]),
            f"{r['usd_per_hour']:.3f}",
            *cells,
            _minutes(r["total_s"]),
            f"[red]{r['cost_usd']:.3f}[/red]" if over else f"{r['cost_usd']:.3f}",
        )
    console.print(table)
    for who, why in notes.items():
        console.print(f"{escape(who)}: not priced ({escape(why)})")
    where = "" if rented else f"on this machine ({escape(rows[0][1].gpu)}), no rental cost; "
    console.print(where + "times in minutes; " + (f"budget ${cap:.2f} (red: over)" if cap else "no budget.max_usd set"))


def _hosted_estimate(spec: TrainSpec, as_json: bool) -> None:
    """A hosted engine is priced per run by its provider: the price, with where it was read."""
    from loraflow.engines.fal import quote

    q = quote(spec)
    cap = spec.budget.max_usd
    if as_json:
        print_json({"budget_usd": cap, "estimates": [q]})
        return
    over = cap is not None and q["cost_usd"] > cap
    cost = f"[red]${q['cost_usd']:.2f}[/red]" if over else f"${q['cost_usd']:.2f}"
    console.print(f"fal {escape(q['app'])}: {q['steps']} steps at ${q['usd_per_step']}/step = {cost}")
    console.print(f"price source: {escape(q['source'])}")
    console.print(f"budget ${cap:.2f} (red: over)" if cap else "no budget.max_usd set")


def offers(
    spec_path: Path | None = typer.Argument(None, help="Rank for this spec (default: the starter spec)."),
    limit: int = typer.Option(15, "--limit", "-n"),
    as_json: bool = typer.Option(False, "--json"),
    provider: str = typer.Option("vastai", "--provider", "-p", help="vastai, runpod or skypilot."),
) -> None:
    """One provider's offers that fit a job (--provider: vastai, runpod, skypilot), cheapest job first.
    Cheapest by the whole job, not by the hour. The table shows the provider's own columns; --json keeps
    its whole row."""
    from loraflow.engines import engine_needs
    from loraflow.providers.registry import RENTED, provider_for, title

    if provider not in RENTED:
        choices = ", ".join(RENTED)
        raise UserInputError(f"unknown provider '{provider}'", where="--provider", fix=f"use one of: {choices}")
    spec = load_spec(spec_path) if spec_path else _starter()
    name = title(provider)
    with waiting(f"asking {name} for offers that fit this job (retried if it does not answer)..."):
        found = _quick_vast() if provider == "vastai" else provider_for(provider, needs=engine_needs, quick=True)
        ranked = found.offers(spec)[:limit]
    if as_json:
        print_json([{"offer": r.offer, "estimate": r.estimate.to_dict()} for r in ranked])
        return
    if provider == "vastai":
        console.print(_vast_table(ranked))
        return
    table = Table(title=f"{name} offers for this job")
    for col in ("offer", "GPU", "$/h", "job min", "job $"):
        table.add_column(col)
    for r in ranked:
        table.add_row(escape(str(r.id)), escape(r.gpu), f"{r.usd_per_hour:.3f}", _minutes(r.estimate.total_s),
                      f"{r.estimate.cost_usd:.3f}")  # fmt: skip
    console.print(table)


def _vast_table(ranked: list[RankedOffer]) -> Table:
    table = Table(title="Vast.ai offers for this job")
    for col in ("offer", "GPU", "VRAM GB", "$/h", "reliability", "down Mb/s", "where", "job min", "job $"):
        table.add_column(col)
    for r in ranked:
        o = r.offer
        table.add_row(
            str(o["id"]),
            escape(str(o.get("gpu_name"))) + _share(o),
            f"{float(o.get('gpu_ram') or 0) / 1024:.0f}",
            f"{float(o.get('dph_total') or 0):.3f}",
            f"{float(o.get('reliability') or 0):.3f}",
            f"{float(o.get('inet_down') or 0):.0f}",
            escape(str(o.get("geolocation") or "")),
            _minutes(r.estimate.total_s),
            f"{r.estimate.cost_usd:.3f}",
        )
    return table


def _share(offer: dict[str, object]) -> str:
    """' (1 of 8)' for GPUs rented from a bigger machine (gpu_frac is the offer's share of its GPUs)."""
    try:
        n, frac = int(offer.get("num_gpus") or 1), float(offer.get("gpu_frac") or 1.0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return f" ({n} of {round(n / frac)})" if 0 < frac < 1 else ""


def _starter():
    from loraflow.spec import TrainSpec

    return TrainSpec.model_validate(
        {
            "name": "offers",
            "dataset": {"path": ".", "trigger_word": "x"},
            "base_model": "flux-dev",
            "compute": {"provider": "vastai"},
        }
    )


def _owners() -> dict[str, str]:
    """Job id -> state for every job in the store."""
    from loraflow.jobs.store import Store

    return {j.id: j.state.value for j in Store().list_jobs(limit=100000)}


def _owned_everywhere(quick: bool) -> tuple[list[tuple[Provider, Rented]], dict[str, str]]:
    """Every provider's machines under loraflow's label, and why a provider could not be asked (no key, no
    answer); when no provider could be asked at all, the first one's error."""
    from loraflow.errors import LoraflowError
    from loraflow.providers.registry import RENTED, provider_for, title

    rows: list[tuple[Provider, Rented]] = []
    notes: dict[str, str] = {}
    errors: list[LoraflowError] = []
    for name in RENTED:  # listing and destroying: no engine needed
        try:
            provider = provider_for(name, quick=quick)
            rows += [(provider, r) for r in provider.owned()]
        except LoraflowError as exc:
            notes[title(name)] = exc.message
            errors.append(exc)
    if len(errors) == len(RENTED):
        raise errors[0]
    return rows, notes


def _notes(notes: dict[str, str]) -> None:
    for who, why in notes.items():
        console.print(f"{escape(who)}: not asked ({escape(why)})")


def instances(as_json: bool = typer.Option(False, "--json")) -> None:
    """Rented machines labelled by loraflow on every provider, with the job that owns each."""
    rows, notes = _owned_everywhere(quick=True)
    owners = _owners()
    data = [
        {
            "provider": provider.name,
            "id": r.id,
            "label": r.label,
            "job": r.job_id,
            "job_state": owners.get(r.job_id),
            "status": r.status,
            "gpu": r.gpu,
            "usd_per_hour": r.usd_per_hour,
        }
        for provider, r in rows
    ]
    if as_json:
        print_json(data)
        return
    table = Table(title="loraflow's rented machines")
    for col in ("provider", "instance", "job", "job state", "status", "GPU", "$/h"):
        table.add_column(col)
    for d in data:
        table.add_row(
            d["provider"], str(d["id"]), escape(d["job"]), str(d["job_state"] or "unknown"), str(d["status"]),
            escape(str(d["gpu"])), f"{float(d['usd_per_hour'] or 0):.3f}",
        )  # fmt: skip
    console.print(table if data else "no instances labelled by loraflow")
    _notes(notes)


def reap(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be destroyed."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Destroy loraflow-labelled machines (every provider) that no live job owns (a crash's leftovers)."""
    from loraflow.jobs.states import ACTIVE

    rows, notes = _owned_everywhere(quick=False)
    owners = _owners()
    live = {job for job, state in owners.items() if state in {s.value for s in ACTIVE}}
    done = []
    for provider, row in rows:
        if row.job_id in live:
            continue
        if not dry_run:
            provider.release(row.id)
        done.append({"provider": provider.name, "id": row.id, "label": row.label, "destroyed": not dry_run})
    if as_json:
        print_json(done)
        return
    verb = "would destroy" if dry_run else "destroyed"
    for d in done:
        console.print(f"{verb} {d['provider']} instance {d['id']} ({escape(str(d['label']))})")
    if not done:
        console.print("nothing to reap: every loraflow instance belongs to a live job")
    _notes(notes)
