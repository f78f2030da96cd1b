"""`loraflow credits ...` and `loraflow models ...`: the platform's ledger and registry from a shell."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from loraflow.cli.output import console, print_json

credits_app = typer.Typer(help="Credits: balances, deposits, the ledger, quotes.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: list, show, review, visibility, trigger map.", no_args_is_help=True)


def _store():
    from loraflow.jobs.store import Store

    return Store()


def _cfg():
    from loraflow.platform.config import PlatformConfig

    return PlatformConfig.from_env()


@credits_app.command("balance")
def balance(user: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")) -> None:
    """Available, held and spent points of a user."""
    from loraflow.platform.credits import balance as get

    b = get(_store(), user).to_dict()
    if as_json:
        print_json(b)
    else:
        console.print(f"{escape(user)}: {b['available']} available, {b['held']} held, {b['spent']} spent")


@credits_app.command("deposit")
def deposit(user: str, points: int, note: str = typer.Option("", "--note")) -> None:
    """Add points to a user's balance."""
    from loraflow.platform.credits import add_entry

    b = add_entry(_store(), user, "deposit", points, by="cli", note=note)
    console.print(f"{escape(user)}: {b.available} available")


@credits_app.command("adjust")
def adjust(user: str, points: int, note: str = typer.Option(..., "--note", help="Why (kept in the ledger).")) -> None:
    """Correct a balance up or down (never below zero)."""
    from loraflow.platform.credits import add_entry

    b = add_entry(_store(), user, "adjustment", points, by="cli", note=note)
    console.print(f"{escape(user)}: {b.available} available")


@credits_app.command("ledger")
def ledger(user: str, limit: int = typer.Option(50, "--limit"), as_json: bool = typer.Option(False, "--json")) -> None:
    """A user's ledger entries, newest first."""
    from loraflow.platform.credits import entries

    rows = entries(_store(), user, limit)
    if as_json:
        print_json(rows)
        return
    for r in rows:
        console.print(f"{r['at']}  {r['kind']:<10} {r['points']:>8}  {r['job_id'] or '-':<12} {escape(r['note'])}")


@credits_app.command("quote")
def quote(spec_path: Path, as_json: bool = typer.Option(False, "--json")) -> None:
    """What a job would cost: estimate (or its budget cap) plus the platform fee, in USD and points."""
    from loraflow.platform.credits import quote as make
    from loraflow.spec import load_spec

    q = make(load_spec(spec_path), _cfg()).to_dict()
    if as_json:
        print_json(q)
    else:
        console.print(
            f"${q['estimate_usd']:.4f} + fee ${q['fee_usd']:.4f} = ${q['total_usd']:.4f} = {q['points']} points"
        )


@credits_app.command("settle")
def settle() -> None:
    """Run the platform sweep now: external checks, settling ended jobs, registering completed ones."""
    from loraflow.running.duties import sweep

    done = sweep(_store(), _cfg())
    console.print(f"settled {len(done['settled'])} job(s), registered {len(done['registered'])} model(s)")


@models_app.command("list")
def list_models(
    user: str = typer.Option("local", "--user"),
    q: str | None = typer.Option(None, "--search"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Models (all of them: the CLI is the operator's)."""
    from loraflow.platform.registry import list_models as get

    rows = get(_store(), user, True, q)
    if as_json:
        print_json(rows)
        return
    for r in rows:
        console.print(
            f"{r['slug']:<30} {r['status']:<10} {r['visibility']:<9} {escape(r['owner'])}  "
            f"{', '.join(r['trigger_words'])}"
        )


@models_app.command("show")
def show(slug: str) -> None:
    from loraflow.platform.registry import get_model

    print_json(get_model(_store(), slug, None))


@models_app.command("register")
def register(job_id: str, checkpoint: int | None = typer.Option(None, "--checkpoint")) -> None:
    """Register a completed job's model (the sweep does this by itself in the service)."""
    from loraflow.platform.registry import register_job

    store = _store()
    model = register_job(store, store.find(job_id), _cfg(), checkpoint)
    console.print(f"registered {model['slug']} ({model['status']})")


@models_app.command("review")
def review(
    slug: str, decision: str = typer.Argument(..., help="approve or reject"), reason: str = typer.Option("", "--reason")
) -> None:
    from loraflow.platform.registry import review as decide

    model = decide(_store(), slug, decision, "cli", reason)
    console.print(f"{slug}: {model['status']}")


@models_app.command("visibility")
def visibility(slug: str, value: str = typer.Argument(..., help="private, unlisted or public")) -> None:
    from loraflow.platform.registry import update_model

    model = update_model(_store(), slug, "cli", True, visibility=value)
    console.print(f"{slug}: {model['visibility']}")


@models_app.command("trigger-map")
def trigger_map() -> None:
    """JSON `{trigger or slug: {slug, url, sha256, weight}}` of approved, non-private models."""
    from loraflow.platform.registry import trigger_map as get

    print_json(get(_store()))
