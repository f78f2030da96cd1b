"""Names belong to the user who took them first: model slugs, trigger words and Hugging Face repos.

Generators resolve `<lora:NAME:W>` through the trigger map, where a slug wins over any trigger
(registry.trigger_map). A service user's new job is refused when its trigger word is another user's
model slug or trigger word, or when it publishes to a Hugging Face repo another user's job publishes to:
before, a trigger equal to someone's slug took over that slug in the map, and two users of one granted
namespace overwrote each other's repo. The record of who owns a repo is the first job that named it
(its owner and its spec, kept in the jobs table), so nothing new is stored.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import String, cast, select

from loraflow.jobs.models import JobRow
from loraflow.jobs.platform_tables import ModelRow
from loraflow.jobs.store import Store


def trigger_owner(store: Store, word: str, owner: str) -> str | None:
    """The other user whose model has `word` as its slug or a trigger word (case-insensitive), or None."""
    needle = word.strip().lower()
    with store.reader() as s:
        rows = s.execute(select(ModelRow.slug, ModelRow.owner, ModelRow.trigger_words).where(ModelRow.owner != owner))
        for slug, other, triggers in rows:
            if needle == slug.lower() or needle in {str(t).lower() for t in triggers or []}:
                return other
    return None


def _hf_repos(spec: dict[str, Any]) -> set[str]:
    targets = ((spec.get("publish") or {}).get("targets")) or []
    hub = [t for t in targets if isinstance(t, dict) and t.get("type") == "huggingface"]
    return {str(t.get("repo_id", "")).lower() for t in hub}


def repo_owner(store: Store, repo_id: str, owner: str) -> str | None:
    """The other user whose job publishes to this Hugging Face repo, or None."""
    with store.reader() as s:
        rows = s.execute(
            select(JobRow.owner, JobRow.spec).where(
                JobRow.owner != owner, cast(JobRow.spec, String).ilike(f"%{repo_id.split('/')[-1]}%")
            )
        )
        return next((other for other, spec in rows if repo_id.lower() in _hf_repos(spec or {})), None)


def names_taken(store: Store, spec: Any, owner: str) -> list[str]:
    """One problem line per name in a new job's spec that another user owns."""
    out = []
    word = spec.dataset.trigger_word
    if word and trigger_owner(store, word, owner):
        out.append(f"dataset.trigger_word: '{word}' is another user's model name or trigger word on this service. "
                   "Fix: choose another trigger word")
    for repo in sorted(_hf_repos(spec.to_dict())):
        if repo_owner(store, repo, owner):
            out.append(f"publish.targets: the Hugging Face repo '{repo}' belongs to another user's models. "
                       "Fix: publish to a repo of your own")
    return out
