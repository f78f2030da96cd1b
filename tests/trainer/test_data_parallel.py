"""compute.gpus N (issue 31): the builtin trainer under the real `accelerate launch` with two CPU processes on
the gloo backend trains the tiny model exactly as one process with the same global batch does, and a run
stopped under two processes resumes exactly in one (fewer GPUs: more accumulation, the same global batch).

Every launch has a hard timeout and its whole process group is killed on the way out, so a hung rank can
fail a test but never hang it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraflow.engines.builtin import trainer_argv
from loraflow.testing.launch_record import rank_pids
from loraflow.trainer.config import TrainerConfig
from loraflow.trainer.events import PREFIX
from loraflow.trainer.loop import train
from loraflow.trainer.parallel import Group, SplitError
from tests.trainer.test_trainer import events_of

LAUNCH_TIMEOUT_S = 600  # a bound, not a wait: the runs take seconds; a hung rank ends at ddp_timeout_s
RUN = dict(steps=6, batch_size=1, caption_dropout=0.3, checkpoint_every=3, ddp_timeout_s=120.0)


def launch(cfg: TrainerConfig, processes: int) -> tuple[int, list[dict]]:
    """Run the trainer as the runner does (engines/builtin.trainer_argv); its exit code and rank 0's events."""
    path = Path(cfg.output_dir) / "config.json"
    cfg.write(path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        trainer_argv(sys.executable, processes, str(path)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        # torch's launcher starts each rank in a session of its own: the launcher's group is not all of them,
        # and a rank left alive keeps the pipes open (the test then hung in communicate() until pytest's timeout).
        for pid in [*descendants(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate()
        tail = (exc.stderr or b"")[-4000:]
        raise AssertionError(f"the launch did not end in {LAUNCH_TIMEOUT_S} s; stderr:\n{tail!r}") from None
    events = [json.loads(line[len(PREFIX):]) for line in out.splitlines() if line.startswith(PREFIX)]
    assert events, f"no events; stderr:\n{err[-4000:]}"
    return proc.returncode, events


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (read from /proc), whatever session each one started."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def losses(events: list[dict]) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events if e["event"] == "progress"}


@pytest.mark.timeout(900)  # launches two processes on a busy machine
def test_two_processes_train_like_one_with_the_same_global_batch(make_config, capsys) -> None:
    # one process accumulating 4 micro-batches a step == two processes accumulating 2 each
    assert train(make_config("one", gradient_accumulation=4, **RUN)) == 0
    one = losses(events_of(capsys))
    two_cfg = make_config("two", gradient_accumulation=2, processes=2, **RUN)
    code, events = launch(two_cfg, 2)
    assert code == 0, events[-3:]
    assert next(e for e in events if e.get("phase") == "loading_model")["processes"] == 2
    two = losses(events)
    assert sorted(two) == sorted(one) == list(range(1, 7))
    assert [two[s] for s in sorted(two)] == pytest.approx([one[s] for s in sorted(one)], rel=1e-5, abs=1e-7)
    a = load_file(Path(two_cfg.output_dir) / "t.safetensors")
    b = load_file(Path(make_config("one").output_dir) / "t.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a)
    # rank 0 alone reports and saves: one event per step, one checkpoint folder per save
    assert [e["step"] for e in events if e["event"] == "progress"] == list(range(1, 7))
    saved = sorted(p.name for p in (Path(two_cfg.output_dir) / "checkpoints").iterdir())
    assert saved == ["step-000003", "step-000006"]


@pytest.mark.timeout(900)  # launches two processes on a busy machine
def test_stopped_under_two_processes_resumes_exactly_in_one(make_config, capsys) -> None:
    assert train(make_config("ref", gradient_accumulation=4, **RUN)) == 0
    reference = losses(events_of(capsys))
    cfg = make_config("moved", gradient_accumulation=2, processes=2, stop_after_step=3, **RUN)
    code, events = launch(cfg, 2)
    assert code != 0 and events[-1]["event"] == "stopped" and events[-1]["step"] == 3  # the launcher's 1
    first = losses(events)
    # the same job on a host with one GPU: the checkpoint's global batch of 4, accumulated by one process
    assert train(cfg.model_copy(update={"stop_after_step": None})) == 0
    rest = events_of(capsys)
    assert next(e for e in rest if e["event"] == "resumed")["step"] == 3
    assert any("accumulation 4" in e.get("message", "") for e in rest if e["event"] == "log")
    after = {**first, **losses(rest)}
    assert [after[s] for s in range(1, 7)] == pytest.approx([reference[s] for s in range(1, 7)], rel=1e-5, abs=1e-7)


@pytest.mark.timeout(900)  # launches two processes on a busy machine
def test_a_hung_rank_ends_the_group_at_the_collective_timeout(make_config, tmp_path: Path) -> None:
    """Rank 1 frozen (SIGSTOP: a GPU stuck in a kernel) must not hang the job: rank 0's next collective times
    out after ddp_timeout_s, it fails, and the launcher ends the group and exits for the runner to see."""
    cfg = make_config("hung", gradient_accumulation=1, processes=2, **{**RUN, "steps": 400, "ddp_timeout_s": 10.0})
    path = Path(cfg.output_dir) / "config.json"
    cfg.write(path)
    with (tmp_path / "stderr.txt").open("w") as err:
        proc = subprocess.Popen(
            trainer_argv(sys.executable, 2, str(path)), stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # rank 0's first progress: both ranks are in the loop
                if line.startswith(PREFIX) and json.loads(line[len(PREFIX):])["event"] == "progress":
                    break
            os.kill(rank_pids(proc.pid)[1], signal.SIGSTOP)
            out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
    events = [json.loads(line[len(PREFIX):]) for line in out.splitlines() if line.startswith(PREFIX)]
    assert proc.returncode != 0 and not any(e["event"] == "done" for e in events)
    assert any(e["event"] == "error" for e in events), (tmp_path / "stderr.txt").read_text()[-3000:]


def test_each_process_owns_a_contiguous_share_and_an_uneven_split_is_refused() -> None:
    two = Group(world=2, rank=1)
    assert two.share(4) == 2 and [i for i in range(4) if two.owns(i, 4)] == [2, 3]
    assert [i for i in range(4) if Group(world=2, rank=0).owns(i, 4)] == [0, 1]
    with pytest.raises(SplitError, match="3 micro-batches cannot be split over 2 processes"):
        two.share(3)
