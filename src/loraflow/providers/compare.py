"""The same job priced on every rented-GPU provider, side by side (`loraflow estimate`, the API's estimate).

Each provider answers with its own offers ranked by the cost of *this* job; the best per GPU type is kept.
A provider that cannot answer (no API key, not reachable, nothing fits, its SDK not installed) is listed
with the reason instead of failing the comparison: a user choosing a provider wants to see the others.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from loraflow.errors import LoraflowError
from loraflow.providers.base import Needs, RankedOffer
from loraflow.providers.registry import RENTED, provider_for, title
from loraflow.spec import TrainSpec


@dataclass
class ProviderOffers:
    provider: str
    title: str
    best: list[RankedOffer] = field(default_factory=list)  # the cheapest job per GPU type, cheapest first
    error: LoraflowError | None = None

    @property
    def note(self) -> str | None:
        return self.error.message if self.error else None


def compare(spec: TrainSpec, needs: Needs, providers: list[str] | None = None) -> list[ProviderOffers]:
    """Every provider's best offer per GPU type for this job (the spec's own provider first).

    The providers are asked at once, each in its own thread: one that retries for a minute because its API
    does not answer must not make the others' answers wait behind it (a sequential loop did).
    """
    names = sorted(providers or RENTED, key=lambda n: n != spec.compute.provider)
    with ThreadPoolExecutor(max_workers=max(1, len(names)), thread_name_prefix="offers") as pool:
        return list(pool.map(lambda name: _ask(spec, needs, name), names))


def _ask(spec: TrainSpec, needs: Needs, name: str) -> ProviderOffers:
    entry = ProviderOffers(name, title(name))
    try:
        seen: set[str] = set()
        for ranked in provider_for(name, needs=needs, quick=True).offers(spec):
            if ranked.gpu not in seen:
                seen.add(ranked.gpu)
                entry.best.append(ranked)
    except LoraflowError as exc:
        entry.error = exc
    return entry


def side_by_side(found: list[ProviderOffers]) -> list[dict[str, Any]]:
    """The comparison as data (the API's estimate, `loraflow estimate --json`): one entry per provider."""
    return [
        {
            "provider": f.provider,
            "title": f.title,
            "estimates": [r.estimate.to_dict() for r in f.best],
            "note": f.note,
        }
        for f in found
    ]
