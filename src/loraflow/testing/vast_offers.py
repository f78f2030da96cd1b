"""The emulated Vast.ai offers and their search: the query language with numbers as strings and aliases,
`dph_total` priced from `allocated_storage`, bid prices for interruptible search."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loraflow.testing.vast_emulator import Emulator

ALIASES = {"cuda_vers": "cuda_max_good", "dph": "dph_total", "reliability2": "reliability"}

# Machines: (gpu_name, gpu_ram MB, dph per GPU, reliability, inet_down, cuda, geolocation, verified, GPUs in the
# machine). A machine of N GPUs is offered as bundles of 1, 2, 4 ... N of them, each with gpu_frac = its share
# of the machine (one GPU of an 8-GPU server: 0.125), as Vast offers them; a bundle stays on offer while the
# machine has that many GPUs free.
CATALOG: list[tuple[str, int, float, float, float, float, str, bool, int]] = [
    ("RTX 3090", 24576, 0.16, 0.991, 800.0, 12.4, "Texas, US", True, 1),
    ("RTX 4090", 24564, 0.29, 0.995, 900.0, 12.8, "Oregon, US", True, 1),
    ("RTX 4090", 24564, 0.27, 0.982, 600.0, 12.8, "Quebec, CA", True, 1),
    ("RTX 4090", 24564, 0.31, 0.999, 1500.0, 13.0, "Bavaria, DE", True, 1),
    ("RTX 4090", 24564, 0.19, 0.62, 300.0, 12.4, ", US", False, 1),  # new, unverified machine
    ("RTX 4090", 24564, 0.33, 0.997, 900.0, 12.8, "Oregon, US", True, 4),  # a 4-GPU server, rented by the GPU
    ("RTX 5090", 32607, 0.55, 0.993, 2000.0, 13.0, "California, US", True, 1),
    ("RTX A6000", 49140, 0.45, 0.996, 1000.0, 12.6, "Ohio, US", True, 1),
    ("L40S", 46068, 0.62, 0.998, 2500.0, 12.8, "Virginia, US", True, 1),
    ("A100 SXM4", 81920, 0.95, 0.999, 5000.0, 12.8, "Utah, US", True, 1),
    ("H100 SXM", 81559, 1.85, 0.999, 8000.0, 13.0, "Texas, US", True, 1),
    ("RTX 3090", 24576, 0.17, 0.99, 700.0, 12.4, "Texas, US", True, 2),
    ("H100 SXM", 81559, 1.65, 0.999, 10000.0, 13.0, "Nevada, US", True, 8),  # most H100s: 8-GPU servers
    ("A100 SXM4", 81920, 0.85, 0.998, 6000.0, 12.8, "Oregon, US", True, 4),
    ("L40S", 46068, 0.55, 0.997, 3000.0, 12.8, "Virginia, US", True, 8),
]


def bundle_sizes(machine_gpus: int) -> list[int]:
    """1, 2, 4 ... up to the whole machine (always included)."""
    sizes = [n for n in (1, 2, 4, 8, 16) if n < machine_gpus]
    return [*sizes, machine_gpus]


def make_offers(start_id: int = 4_100_000) -> list[dict[str, Any]]:
    offers: list[dict[str, Any]] = []
    for i, (name, ram, dph, rel, down, cuda, geo, verified, total) in enumerate(CATALOG):
        for n in bundle_sizes(total):
            offers.append(_offer(start_id + len(offers), 20_000 + i, 300 + i, name, ram, dph, rel, down, cuda, geo,
                                 verified, n, total))  # fmt: skip
    return offers


def _offer(offer_id: int, machine_id: int, host_id: int, name: str, ram: int, dph: float, rel: float, down: float,
           cuda: float, geo: str, verified: bool, n: int, total: int) -> dict[str, Any]:  # fmt: skip
    return {
        "id": offer_id,
        "ask_contract_id": offer_id,
        "machine_id": machine_id,
        "host_id": host_id,
        "num_gpus": n,
        "gpu_name": name,
        "gpu_ram": ram,
        "gpu_total_ram": ram * n,
        "gpu_frac": n / total,
        "gpu_arch": "nvidia",
        "cuda_max_good": cuda,
        "compute_cap": 890 if "40" in name else 860,
        "driver_version": "570.86.10",
        "cpu_cores": 32 * total,
        "cpu_cores_effective": 32.0 * n,
        "cpu_ram": 64000 * n,
        "disk_space": 500.0,
        "inet_up": down / 2,
        "inet_down": down,
        "inet_up_cost": 0.005,
        "inet_down_cost": 0.005,
        "direct_port_count": 20,
        "dph_base": round(dph * n, 4),
        "min_bid": round(dph * n * 0.5, 4),
        "storage_cost": 0.15,
        "reliability": rel,
        "reliability2": rel,
        "verified": verified,
        "verification": "verified" if verified else "unverified",
        "rentable": True,
        "rented": False,
        "external": False,
        "geolocation": geo,
        "dlperf": 40.0 * n,
        "score": 100.0 * rel / (dph * n),
        "hosting_type": 0,
        "is_bid": False,
    }


def free_gpus(emu: Emulator, machine_id: int, total: int) -> int:
    """GPUs of a machine no instance holds (the caller holds emu.lock)."""
    held = sum(i.offer["num_gpus"] for i in emu.instances.values() if i.offer["machine_id"] == machine_id)
    return total - held


def available(emu: Emulator, offer: dict[str, Any]) -> bool:
    """A bundle is on offer while its machine has that many GPUs free."""
    total = round(offer["num_gpus"] / offer["gpu_frac"])
    return offer["num_gpus"] <= free_gpus(emu, offer["machine_id"], total)


def coerce(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value.replace("_", " ") if value not in ("true", "false") else value == "true"
    return value


def matches(row: dict[str, Any], key: str, ops: dict[str, Any]) -> bool:
    field_name = ALIASES.get(key, key)
    actual = row.get(field_name)
    for op, raw in ops.items():
        want = [coerce(v) for v in raw] if isinstance(raw, list) else coerce(raw)
        if field_name == "geolocation" and isinstance(actual, str):
            actual = actual.strip().split(",")[-1].strip() if actual else ""
        if op == "eq" and actual != want:
            return False
        if op == "neq" and actual == want:
            return False
        if op in ("gt", "gte", "lt", "lte"):
            if actual is None:
                return False
            if op == "gt" and not actual > want:
                return False
            if op == "gte" and not actual >= want:
                return False
            if op == "lt" and not actual < want:
                return False
            if op == "lte" and not actual <= want:
                return False
        if op == "in" and actual not in want:
            return False
        if op in ("notin", "nin") and actual in want:
            return False
        if op not in ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin", "nin"):
            raise ValueError(f"{op} is not a valid search op")
    return True


def search_offers(emu: Emulator, q: dict[str, Any]) -> tuple[int, Any]:
    q = dict(q)
    order = q.pop("order", [["score", "desc"]])
    limit = int(q.pop("limit", 64) or 64)
    kind = q.pop("type", "on-demand")
    if kind not in ("on-demand", "ondemand", "bid", "reserved", "interruptible"):
        return 400, {"error": "invalid_request", "msg": f"invalid type {kind}"}
    storage = float(q.pop("allocated_storage", 5.0))
    for ignored in ("disable_bundling", "target_reliability", "extra_ids", "show_incompatible"):
        q.pop(ignored, None)
    q.setdefault("rented", {"eq": False})
    rows = []
    with emu.lock:
        for offer in emu.offers:
            row = dict(offer)
            row["rented"] = not available(emu, offer)
            row["storage_total_cost"] = round(row["storage_cost"] * storage / 720, 7)
            row["dph_total"] = round(row["dph_base"] + row["storage_total_cost"], 7)
            if kind in ("bid", "interruptible"):
                row["dph_base"] = row["min_bid"]
                row["is_bid"] = True
            try:
                if all(matches(row, k, ops) for k, ops in q.items() if isinstance(ops, dict)):
                    rows.append(row)
            except ValueError as exc:
                return 400, {"error": "invalid_request", "msg": str(exc)}
    for key, direction in reversed(order):
        rows.sort(key=lambda r, k=key: (r.get(ALIASES.get(k, k)) is None, r.get(ALIASES.get(k, k)) or 0),
                  reverse=direction == "desc")  # fmt: skip
    return 200, {"offers": rows[:limit]}
