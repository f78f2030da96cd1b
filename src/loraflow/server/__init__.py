"""The service: a REST API (FastAPI) over the same store and runners as the CLI."""

from __future__ import annotations
