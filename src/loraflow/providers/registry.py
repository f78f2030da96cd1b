"""Which provider rents for a `compute.provider` value: one place, so the runner, the estimate, `reap`
and the API never branch on a provider's name.

A provider module is imported only when it is asked for (RunPod's SDK is heavy, SkyPilot's heavier).
"""

from __future__ import annotations

import importlib

from loraflow.providers.base import Needs, Provider

# compute.provider value -> (module, class, the name people know it by)
RENTED: dict[str, tuple[str, str, str]] = {
    "vastai": ("loraflow.providers.vastai", "VastProvider", "Vast.ai"),
    "runpod": ("loraflow.providers.runpod", "RunPodProvider", "RunPod"),
    "skypilot": ("loraflow.providers.skypilot", "SkyPilotProvider", "SkyPilot"),
}


def is_rented(provider: str | None) -> bool:
    """A machine loraflow rents (and must destroy), as opposed to this machine or the user's SSH host."""
    return provider in RENTED


def title(provider: str) -> str:
    return RENTED[provider][2] if provider in RENTED else provider


def offered(granted: frozenset[str] | set[str], first: str | None = None) -> list[str]:
    """The rented-GPU providers a service grants its users (LORAFLOW_SERVICE_PROVIDERS), `first` (the spec's
    own, already let through by the trust check) first: what the API's and the wizard's comparisons ask."""
    names = [n for n in RENTED if n in granted or n == first]
    return sorted(names, key=lambda n: n != first)


def provider_for(name: str, needs: Needs | None = None, quick: bool = False) -> Provider:
    """The provider for `name`. `needs` (engines.engine_needs) is required to rank offers and rent; listing
    and destroying work without it. `quick`: for read-only questions a person waits on (few, short tries)."""
    if name not in RENTED:
        raise KeyError(f"{name!r} is not a rented-GPU provider (known: {', '.join(RENTED)})")
    module, cls, _ = RENTED[name]
    factory = getattr(importlib.import_module(module), cls)
    return factory.quick(needs) if quick else factory(needs=needs)
