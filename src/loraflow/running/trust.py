"""The service's trust boundary: what a spec from a service user may name.

On one's own machine the spec's author is the operator, so every key keeps its full power. Through
`loraflow serve` a spec is *data* from someone else: it may not name anything on the server or in its
environment (executables, paths, hosts, keys, variables, endpoints) unless the operator granted it by
configuration. `refusals` lists every key that oversteps, so the submit door can answer one 422 that
names them all.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loraflow import catalog
from loraflow.errors import UserInputError
from loraflow.notify.addresses import allow_private_from_env
from loraflow.spec import SshTarget, TrainSpec

# Engine options that name server paths or executables: never a service user's to set.
NEVER_GRANTED_OPTIONS = frozenset({"path", "python", "launcher", "models_dir", "venv", "env", "command"})


def _names(value: str) -> frozenset[str]:
    return frozenset(v.strip() for v in value.split(",") if v.strip())


@dataclass(frozen=True)
class Grants:
    """What the operator lets service users name, read once from the environment at server start.

    Each field is opt-in: an empty grant means service users cannot use that thing at all.
    """

    providers: frozenset[str] = frozenset({"local", "vastai"})
    ssh_hosts: frozenset[str] = frozenset()  # names in the LORAFLOW_SSH_HOSTS file users may pick
    s3_buckets: frozenset[str] = frozenset()  # buckets on the operator's endpoint (LORAFLOW_S3_ENDPOINT_URL)
    hf_namespaces: frozenset[str] = frozenset()  # Hugging Face owners repos may be created under
    engine_options: frozenset[str] = frozenset()  # engine.options keys users may pass through
    wandb: bool = False  # W&B runs under the operator's WANDB_API_KEY
    hosted_engines: frozenset[str] = frozenset()  # engines that spend the operator's account (fal: FAL_KEY)
    comfydeploy: bool = False  # pushes into the operator's ComfyDeploy workspace (COMFY_DEPLOY_API_KEY)
    private_webhooks: bool = False  # webhooks to loopback/private addresses (on-prem, tests)

    @classmethod
    def from_env(cls) -> Grants:
        env = os.environ
        return cls(
            providers=_names(env.get("LORAFLOW_SERVICE_PROVIDERS", "local,vastai")),
            ssh_hosts=frozenset(registered_ssh_hosts()),
            s3_buckets=_names(env.get("LORAFLOW_SERVICE_S3_BUCKETS", "")),
            hf_namespaces=_names(env.get("LORAFLOW_SERVICE_HF_NAMESPACES", "")),
            engine_options=_names(env.get("LORAFLOW_SERVICE_ENGINE_OPTIONS", "")) - NEVER_GRANTED_OPTIONS,
            wandb=env.get("LORAFLOW_SERVICE_WANDB", "0") == "1",
            hosted_engines=_names(env.get("LORAFLOW_SERVICE_HOSTED_ENGINES", "")),
            comfydeploy=env.get("LORAFLOW_SERVICE_COMFYDEPLOY", "0") == "1",
            private_webhooks=allow_private_from_env(),
        )


def registered_ssh_hosts() -> dict[str, SshTarget]:
    """The operator's SSH hosts by name, from the YAML file LORAFLOW_SSH_HOSTS names (empty without one).

    A spec picks one with `compute.target: NAME`; the host, user, key and folder stay server-side.
    """
    path = os.environ.get("LORAFLOW_SSH_HOSTS")
    if not path:
        return {}
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        return {str(name): SshTarget.model_validate(entry) for name, entry in raw.items()}
    except (OSError, yaml.YAMLError, AttributeError, ValueError) as exc:
        raise UserInputError(
            f"the SSH host registry {path} cannot be read: {exc}",
            fix="give LORAFLOW_SSH_HOSTS a YAML mapping of name -> {host, port, user, identity_file, root}",
        ) from None


def ssh_target(spec: TrainSpec) -> SshTarget:
    """The SSH host a job runs on: the spec's own (operator) or the registered one it names."""
    if spec.compute.ssh is not None:
        return spec.compute.ssh
    hosts = registered_ssh_hosts()
    name = spec.compute.target or ""
    if name not in hosts:
        raise UserInputError(
            f"compute.target: no SSH host named {name!r} is registered on this server",
            fix=f"use one of: {', '.join(sorted(hosts)) or '(none registered; see LORAFLOW_SSH_HOSTS)'}",
        )
    return hosts[name]


def _has(raw: Any, *keys: str | int) -> bool:
    """Whether the user wrote this key (defaults from the catalog do not count)."""
    node = raw
    for key in keys:
        if isinstance(key, int):
            if not isinstance(node, list) or key >= len(node):
                return False
        elif not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _looks_like_path(value: str) -> bool:
    return value.startswith((".", "/", "~")) or "/" in value or "\\" in value


def _is_hub_id(value: str) -> bool:
    """`owner/name` on the Hub, and not also a folder the server would load instead (from_pretrained
    prefers a local folder of the same name)."""
    parts = value.split("/")
    plain = len(parts) == 2 and all(p and not p.startswith((".", "~")) and "\\" not in p for p in parts)
    return plain and not Path(value).exists()


def _get(raw: Any, *keys: str) -> Any:
    node = raw
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _listed(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def refusals(raw: dict[str, Any], grants: Grants, allowed_base_models: list[str]) -> list[str]:
    """Every key of a service user's spec that names something the operator did not grant, with the fix.

    It reads what the user wrote (not the spec after defaults), so it answers even for a spec that
    fails validation: a hostile spec learns every refusal in one 422.
    """
    out: list[str] = []
    grant_hint = "ask the operator to grant it"

    # Engines: a hosted one trains on the operator's account; no executables, checkouts or launchers.
    engine = _get(raw, "engine", "name") if isinstance(raw.get("engine"), dict) else raw.get("engine")
    if engine in catalog.hosted_engines() and engine not in grants.hosted_engines:
        out.append(f"engine.name: {engine} trains on this service's own {engine} account. Fix: use another engine, "
                   f"or {grant_hint} (LORAFLOW_SERVICE_HOSTED_ENGINES={engine})")
    options = _get(raw, "engine", "options")
    for key in options if isinstance(options, dict) else {}:
        if key in NEVER_GRANTED_OPTIONS:
            out.append(f"engine.options.{key}: names a program or folder on the server; a service spec cannot. "
                       "Fix: remove it (the operator installs engines)")
        elif key not in grants.engine_options:
            out.append(f"engine.options.{key}: not allowed on this service. Fix: remove it, or "
                       f"{grant_hint} (LORAFLOW_SERVICE_ENGINE_OPTIONS)")

    # Compute: where it runs is the operator's; a user picks a registered host by name.
    provider = _get(raw, "compute", "provider") or "local"
    target = _get(raw, "compute", "target")
    if provider not in grants.providers and not (provider == "ssh" and target):
        out.append(f"compute.provider: '{provider}' is not offered on this service. Fix: use one of "
                   f"{', '.join(sorted(grants.providers)) or '(none)'}")
    if _has(raw, "compute", "ssh"):
        out.append("compute.ssh: a service spec cannot name a host, user or key. Fix: pick a registered host "
                   f"with compute.target ({', '.join(sorted(grants.ssh_hosts)) or 'none registered'})")
    if target is not None and target not in grants.ssh_hosts:
        out.append(f"compute.target: no SSH host named {target!r} is registered. Fix: use one of "
                   f"{', '.join(sorted(grants.ssh_hosts)) or '(none registered; LORAFLOW_SSH_HOSTS)'}")
    if _has(raw, "compute", "python"):
        out.append("compute.python: names an executable on the host. Fix: remove it (the operator's image sets it)")
    if _has(raw, "compute", "setup"):
        out.append("compute.setup: a set-up script runs with the operator's credentials. Fix: remove it")

    # Models: catalog ids, or folders the operator listed.
    base = raw.get("base_model")
    if isinstance(base, str) and _looks_like_path(base) and base not in allowed_base_models:
        out.append(f"base_model: '{base}' names a folder on the server. Fix: use a catalog id "
                   f"({', '.join(catalog.base_models())})")
    model = _get(raw, "dataset", "captions", "model")
    if isinstance(model, str) and not _is_hub_id(model) and model not in allowed_base_models:
        out.append("dataset.captions.model: names a folder on the server. Fix: give a Hub id or remove it")

    # Destinations: the operator's buckets and namespaces only.
    for i, t in enumerate(_listed(_get(raw, "publish", "targets"))):
        where = f"publish.targets[{i}]"
        if t.get("type") == "s3":
            if t.get("endpoint_url"):
                out.append(f"{where}.endpoint_url: a service spec cannot choose where the server's S3 "
                           "credentials are sent. Fix: remove it (the operator's endpoint is used)")
            if t.get("bucket") not in grants.s3_buckets:
                allowed = ", ".join(sorted(grants.s3_buckets)) or "(none; LORAFLOW_SERVICE_S3_BUCKETS)"
                out.append(f"{where}.bucket: {t.get('bucket')!r} is not a bucket this service publishes to. "
                           f"Fix: use one of {allowed}")
        elif t.get("type") == "comfydeploy" and not grants.comfydeploy:
            out.append(f"{where}: ComfyDeploy pushes go to this service's own workspace. Fix: remove it, or "
                       f"{grant_hint} (LORAFLOW_SERVICE_COMFYDEPLOY=1)")
        elif t.get("type") == "huggingface":
            owner = str(t.get("repo_id") or "").split("/", 1)[0]
            if owner not in grants.hf_namespaces:
                allowed = ", ".join(sorted(grants.hf_namespaces)) or "(none; LORAFLOW_SERVICE_HF_NAMESPACES)"
                out.append(f"{where}.repo_id: {owner!r} is not a namespace this service publishes to. Fix: use "
                           f"one of {allowed}")

    # Notifications: no server variables; webhooks to public addresses only.
    for i, note in enumerate(_listed(raw.get("notifications"))):
        if note.get("url_env"):
            out.append(f"notifications[{i}].url_env: names a variable of the server's environment. Fix: give url")
        if isinstance(note.get("url"), str):
            from loraflow.notify.addresses import check_webhook_url

            problem = check_webhook_url(note["url"], allow_private=grants.private_webhooks or allow_private_from_env())
            if problem:
                out.append(f"notifications[{i}].url: {problem}")
    if _get(raw, "wandb", "enabled") and not grants.wandb:
        out.append(f"wandb.enabled: W&B runs under the operator's key. Fix: set it false, or {grant_hint} "
                   "(LORAFLOW_SERVICE_WANDB=1)")
    return out
