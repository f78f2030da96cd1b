"""The service: the REST API and the web UI (FastAPI), over the same submit door, runners and store
as the CLI; authentication, problem details, uploads."""

from __future__ import annotations
