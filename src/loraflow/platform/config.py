"""Platform settings, from the environment (a platform's operators set them once per deployment)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class PlatformConfig:
    credits: bool = False  # hold and charge credits for jobs
    points_per_usd: int = 100  # the platform's own currency: 100 points = 1 USD by default
    fee_percent: float = 0.0  # added to the real cost
    fee_fixed_usd: float = 0.0  # per job
    local_usd_per_hour: float = 0.0  # what an hour on the platform's own GPUs costs (local provider)
    review: str = "auto"  # auto: models are approved when published; manual: an admin decides
    auto_approve_users: list[str] = field(default_factory=list)  # trusted users skip manual review
    precheck_url: str | None = None  # a hook that must allow a job before it trains
    default_visibility: str = "private"

    @classmethod
    def from_env(cls) -> PlatformConfig:
        env = os.environ

        def names(key: str) -> list[str]:
            return [v.strip() for v in env.get(key, "").split(",") if v.strip()]

        return cls(
            credits=env.get("LORAFLOW_CREDITS", "0") == "1",
            points_per_usd=int(env.get("LORAFLOW_POINTS_PER_USD", 100)),
            fee_percent=float(env.get("LORAFLOW_FEE_PERCENT", 0)),
            fee_fixed_usd=float(env.get("LORAFLOW_FEE_FIXED_USD", 0)),
            local_usd_per_hour=float(env.get("LORAFLOW_LOCAL_USD_PER_HOUR", 0)),
            review=env.get("LORAFLOW_REVIEW", "auto"),
            auto_approve_users=names("LORAFLOW_AUTO_APPROVE_USERS"),
            precheck_url=env.get("LORAFLOW_PRECHECK_URL") or None,
            default_visibility=env.get("LORAFLOW_DEFAULT_VISIBILITY", "private"),
        )
