"""The job state machine. Every change goes through `check_transition`; an illegal one raises.

`stopped` is added to DESIGN.md's list: a user's stop keeps the checkpoints and can be resumed, which
`cancelled` (the job is abandoned) cannot.
"""

from __future__ import annotations

from enum import StrEnum

from loraflow.errors import IllegalTransition


class JobState(StrEnum):
    PENDING = "pending"
    PREPARING = "preparing"
    PROVISIONING = "provisioning"
    TRAINING = "training"
    FINISHING = "finishing"
    AWAITING_APPROVAL = "awaiting_approval"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    STOPPED = "stopped"
    STOPPED_BUDGET = "stopped_budget"


S = JobState
_ACTIVE_EXITS = {S.FAILED, S.CANCELLED, S.STOPPED}
TRANSITIONS: dict[JobState, set[JobState]] = {
    S.PENDING: {S.PREPARING} | _ACTIVE_EXITS,
    S.PREPARING: {S.PROVISIONING} | _ACTIVE_EXITS,
    S.PROVISIONING: {S.TRAINING, S.STOPPED_BUDGET} | _ACTIVE_EXITS,
    # training -> provisioning: the host died or stalled and the job moves to a new lease.
    S.TRAINING: {S.FINISHING, S.PROVISIONING, S.STOPPED_BUDGET} | _ACTIVE_EXITS,
    S.FINISHING: {S.AWAITING_APPROVAL, S.COMPLETED, S.FAILED},
    S.AWAITING_APPROVAL: {S.FINISHING, S.COMPLETED, S.CANCELLED},
    S.COMPLETED: set(),
    S.CANCELLED: set(),
    # Resumable ends: back to pending, and the stages skip what is already done.
    S.FAILED: {S.PENDING, S.CANCELLED},
    S.STOPPED: {S.PENDING, S.CANCELLED},
    S.STOPPED_BUDGET: {S.PENDING, S.CANCELLED},
}
TERMINAL = {S.COMPLETED, S.CANCELLED}
RESUMABLE = {S.FAILED, S.STOPPED, S.STOPPED_BUDGET}
ACTIVE = {S.PENDING, S.PREPARING, S.PROVISIONING, S.TRAINING, S.FINISHING}


def check_transition(current: JobState | str, new: JobState | str) -> JobState:
    cur, nxt = JobState(current), JobState(new)
    if nxt not in TRANSITIONS[cur]:
        allowed = ", ".join(sorted(s.value for s in TRANSITIONS[cur])) or "none (final state)"
        raise IllegalTransition(f"a job cannot go from {cur.value} to {nxt.value}; allowed: {allowed}")
    return nxt
