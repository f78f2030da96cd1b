"""Where a webhook may go: the address policy of the service and of one's own machine.

A service user's spec is data, so a webhook it names must not reach the server's own network: the
host is resolved and every address it resolves to must be public (no loopback, private, link-local,
CGNAT, multicast, unspecified, reserved or cloud-metadata range). The check runs when the spec is
submitted and again before every request, and the request then goes to the very address that was
checked (so a name that resolves elsewhere a second later gains nothing); redirects are never followed
blindly, each Location is checked the same way. On one's own machine (the CLI, owner "local") any
address is fine: tests and home setups send to loopback receivers.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

import httpx

ALLOW_PRIVATE_ENV = "LORAFLOW_WEBHOOK_ALLOW_PRIVATE"
METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
CGNAT = ipaddress.ip_network("100.64.0.0/10")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class AddressPolicy:
    """allow_private: any address (one's own machine, or an operator who set LORAFLOW_WEBHOOK_ALLOW_PRIVATE=1)."""

    allow_private: bool


def allow_private_from_env() -> bool:
    return os.environ.get(ALLOW_PRIVATE_ENV, "") in ("1", "true", "yes")


def is_service_job(job: Any) -> bool:
    """A job a service user submitted. For now: its owner is not "local" (the CLI's owner), unless the job
    says otherwise in its outputs' `trust` ("service" or "operator"), which the submit door sets."""
    outputs = getattr(job, "outputs", None)
    trust = outputs.trust if outputs is not None else None
    return trust == "service" if trust else getattr(job, "owner", "local") != "local"


def webhook_policy(job: Any) -> AddressPolicy:
    """The policy for a job's webhooks: public addresses only for a service user's job."""
    return AddressPolicy(allow_private=not is_service_job(job) or allow_private_from_env())


def forbidden_reason(ip: IP) -> str | None:
    """Why an address is not a public one, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return forbidden_reason(ip.ipv4_mapped)
    if ip in METADATA:
        return "a cloud metadata address"
    checks = [
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT, "a carrier-grade NAT address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    ]
    return next((why for hit, why in checks if hit), None)


def resolve(host: str, port: int) -> list[IP]:
    """Every address the name resolves to (an IP literal is itself)."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def _parse(url: str) -> httpx.URL | str:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        return f"is not a valid URL ({exc})"
    if parsed.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parsed.host:
        return "has no host"
    return parsed


def public_address(url: str) -> tuple[httpx.URL, IP]:
    """The URL and the one public address it may be sent to; ValueError with the reason otherwise."""
    parsed = _parse(url)
    if isinstance(parsed, str):
        raise ValueError(parsed)
    try:
        addresses = resolve(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except OSError as exc:
        raise ValueError(f"{parsed.host} does not resolve ({exc})") from None
    for ip in addresses:
        if (why := forbidden_reason(ip)) is not None:
            named = parsed.host if parsed.host == str(ip) else f"{parsed.host} ({ip})"
            raise ValueError(f"{named} is {why}; webhooks from this service go to public addresses only")
    return parsed, addresses[0]


def check_webhook_url(url: str, allow_private: bool) -> str | None:
    """What is wrong with a webhook URL under the policy, or None (for the submit door: 422 naming the key).

    A name that does not resolve now is let through: it is checked again before every delivery."""
    parsed = _parse(url)
    if isinstance(parsed, str):
        return parsed
    if allow_private:
        return None
    try:
        public_address(url)
    except ValueError as exc:
        return None if "does not resolve" in str(exc) else str(exc)
    return None


def pinned(url: str, policy: AddressPolicy) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The request to make for `url`: (URL, extra headers, httpx extensions). Under the public-only policy
    the URL names the checked address itself, with the original Host header and TLS server name, so the
    connection cannot land anywhere else; ValueError when the address is refused."""
    if policy.allow_private:
        return url, {}, {}
    parsed, ip = public_address(url)
    host_header = parsed.netloc.decode("ascii")
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    return str(parsed.copy_with(host=str(ip))), {"Host": host_header}, extensions
