"""The service: a REST API (FastAPI) and web UI over the same submit door, store and use cases as the CLI;
routes/ holds one router per resource, and the rules a request meets live below, in running/ and publish/."""

from __future__ import annotations
