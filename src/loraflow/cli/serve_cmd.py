"""`loraflow serve`, `loraflow worker` and `loraflow tokens`: the service and its credentials."""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import typer
from rich.markup import escape

from loraflow.cli.output import console, print_json
from loraflow.errors import UserInputError

tokens_app = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8000, "--port"),
    workers: int = typer.Option(
        2,
        "--workers",
        help="Jobs started or trained here at once; followed remote ones take none (0: API and UI only).",
    ),
    no_auth: bool = typer.Option(False, "--no-auth", help="No tokens (only with --host 127.0.0.1)."),
    gpus: int = typer.Option(
        0, "--gpus", help="Local trainings at once (0: this machine's GPU count; a CPU-only machine counts one)."
    ),
) -> None:
    """Start the API, the web UI and job workers in one process."""
    import uvicorn

    from loraflow.jobs.outage import outage_bound
    from loraflow.jobs.store import Store
    from loraflow.notify.notifier import Dispatcher
    from loraflow.running.worker import Worker, gpu_capacity
    from loraflow.server.app import ServiceConfig, create_app
    from loraflow.server.http_settings import uvicorn_options
    from loraflow.server.ui import install

    if no_auth and host not in ("127.0.0.1", "localhost", "::1"):
        raise UserInputError("--no-auth is allowed only with --host 127.0.0.1", fix="drop --no-auth and use tokens")
    config = ServiceConfig.from_env()
    config.no_auth = no_auth
    capacity = gpus or gpu_capacity()
    if workers > 0:  # submitted jobs wait for these workers' slots instead of each starting at once
        config.queue_for_workers = True
    store = Store()
    app = create_app(store, config)
    install(app)
    if workers > 0:  # queue ETAs in the API and the web UI count the jobs that can run here at once
        os.environ.setdefault("LORAFLOW_QUEUE_SLOTS", str(min(workers, capacity)))
    # The workers wait out a store that is away (the API answers 503 at once meanwhile): a store of their own.
    # Without workers here, this process still delivers every job's webhook outbox (retries for hours).
    worker = dispatcher = None
    if workers > 0:
        worker = Worker(Store(ride_out_s=outage_bound()), slots=workers, capacity=capacity).start()
    else:
        dispatcher = Dispatcher(store).start()
    console.print(f"loraflow on http://{host}:{port}  (API docs: /docs, workers: {workers})")
    try:
        uvicorn.run(app, **uvicorn_options(host, port), log_level="warning")  # header timeout, proxies: see there
    finally:
        if worker:
            worker.stop()
        if dispatcher is not None:
            dispatcher.stop(flush_timeout_s=5)


def worker(
    slots: int = typer.Option(
        4, "--slots", help="Jobs started or trained here at once; followed remote ones take none."
    ),
    lease_s: float = typer.Option(30.0, "--lease", help="Seconds without a heartbeat before a job is taken over."),
    gpus: int = typer.Option(
        0, "--gpus", help="Local trainings at once (0: this machine's GPU count; a CPU-only machine counts one)."
    ),
) -> None:
    """Claim and run jobs from the shared database (PostgreSQL for several machines)."""
    from loraflow.jobs.outage import outage_bound
    from loraflow.jobs.store import Store
    from loraflow.running.worker import Worker

    w = Worker(Store(ride_out_s=outage_bound()), slots=slots, lease_s=lease_s, capacity=gpus or None)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    console.print(f"worker {w.id}: {slots} slots; Ctrl-C stops claiming (running jobs continue)")
    w.start()
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    w.stop()


@tokens_app.command("create")
def tokens_create(
    user: str = typer.Argument(..., help="Who the token belongs to: jobs made with it are theirs alone."),
    label: str = typer.Option("", "--label"),
    admin: bool = typer.Option(False, "--admin", help="May see and act on every user's jobs."),
) -> None:
    """Create a token; it is shown once and stored only as a hash."""
    from loraflow.jobs.store import Store
    from loraflow.server.tokens import create_token

    token = create_token(Store(), user, label, admin)
    console.print(escape(token))


@tokens_app.command("list")
def tokens_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Tokens by id and user (never the tokens themselves)."""
    from loraflow.jobs.store import Store
    from loraflow.server.tokens import list_tokens

    rows = list_tokens(Store())
    if as_json:
        print_json(rows)
        return
    for r in rows:
        state = "revoked" if r["revoked"] else "active"
        console.print(f"{r['id']}  {escape(str(r['user']))}  {escape(str(r['label']))}  {state}")


@tokens_app.command("revoke")
def tokens_revoke(token_id: str = typer.Argument(...)) -> None:
    """Revoke a token by its id (from `tokens list`)."""
    from loraflow.jobs.store import Store
    from loraflow.server.tokens import revoke

    if not revoke(Store(), token_id):
        raise UserInputError(f"no token with id {token_id}", fix="see `loraflow tokens list`")
    console.print(f"token {token_id} revoked")
