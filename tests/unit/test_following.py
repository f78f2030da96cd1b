"""What a round of following a trainer means, as the runner and the worker's follower both read it
(running/following.py's TrainerFollow), and which place a spec trains in."""

from __future__ import annotations

import json
from pathlib import Path

from loraflow.layout import JobLayout
from loraflow.monitor import events as ev
from loraflow.monitor.builtin_parser import BuiltinParser
from loraflow.running.following import TrainerFollow
from loraflow.spec import TrainSpec
from loraflow.trainer.events import PREFIX
from tests.conftest import EXAMPLES


def spec(on_stall: str = "notify", provider: str = "local") -> TrainSpec:
    return TrainSpec.model_validate(
        {
            "name": "x",
            "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
            "base_model": "tiny-flux",
            "engine": {"name": "builtin"},
            "monitor": {"on_stall": on_stall, "stall_minutes": 1},
            "compute": {"provider": provider, **({"ssh": {"host": "gpu.example"}} if provider == "ssh" else {})},
        }
    )


def line(**event: object) -> bytes:
    return (PREFIX + json.dumps({"t": 1.0, **event}) + "\n").encode()


def follow(tmp_path: Path, on_stall: str = "notify") -> TrainerFollow:
    layout = JobLayout(str(tmp_path))
    Path(layout.run).mkdir(parents=True)
    return TrainerFollow(spec(on_stall), layout, BuiltinParser(), now=0.0, collect_every_s=15.0)


def test_a_round_parses_its_bytes_and_keeps_a_line_cut_in_two_for_the_next(tmp_path: Path) -> None:
    f = follow(tmp_path)
    whole = line(event="progress", step=3, total=10, loss=0.5, lr=1e-4, rate=1.0, elapsed_s=1, eta_s=7)
    assert f.feed(whole[:20], ended=False, now=1.0) == []
    (progress,) = f.feed(whole[20:], ended=False, now=2.0)
    assert progress.type == ev.PROGRESS and progress.data["step"] == 3


def test_outputs_are_copied_after_a_save_line_and_every_window(tmp_path: Path) -> None:
    f = follow(tmp_path)
    saved = f.feed(line(event="checkpoint", step=5, path="checkpoints/step-000005"), ended=False, now=1.0)
    assert f.collect_due(saved, now=1.0)
    assert not f.collect_due([], now=10.0)  # nothing new within the window
    assert f.collect_due([], now=16.5)


def test_a_stop_is_signalled_once_the_trainer_has_spoken(tmp_path: Path) -> None:
    f = follow(tmp_path)
    Path(JobLayout(str(tmp_path)).stop_request).touch()
    assert not f.stop_due(now=1.0)  # still starting: a SIGTERM now would leave no checkpoint
    f.feed(line(event="phase", phase="training", total=10, start_step=0), ended=False, now=2.0)
    assert f.stop_due(now=2.0)
    f.stop_sent(True)
    assert not f.stop_due(now=3.0)


def test_a_stall_only_notified_is_told_again_after_a_full_window(tmp_path: Path) -> None:
    f = follow(tmp_path, on_stall="notify")
    f.feed(line(event="phase", phase="training", total=10, start_step=0), ended=False, now=0.0)
    stall = f.stall(now=61.0)
    assert stall is not None and f.stall_event(stall)[1]["action"] == "notify"
    assert f.stall(now=62.0) is None
    assert f.stall(now=122.0) is not None


def test_a_slow_save_or_sample_is_progress_not_a_hang(tmp_path: Path) -> None:
    f = follow(tmp_path, on_stall="fail")
    f.feed(line(event="phase", phase="training", total=10, start_step=0), ended=False, now=0.0)
    f.feed(line(event="checkpoint", step=5, path="checkpoints/step-000005"), ended=False, now=50.0)
    assert f.stall(now=100.0) is None  # 100 s since the last step, 50 since the save
    f.feed(line(event="sample", step=5, path="samples/a.png", prompt="p"), ended=False, now=100.0)
    assert f.stall(now=150.0) is None
    assert f.stall(now=161.0) is not None


def test_a_trainer_that_announced_its_result_is_only_awaited_then_ended(tmp_path: Path) -> None:
    f = follow(tmp_path, on_stall="fail")
    f.feed(line(event="phase", phase="training", total=10, start_step=0), ended=False, now=0.0)
    f.feed(line(event="done", step=10, total=10, lora="x.safetensors"), ended=False, now=30.0)
    assert f.stall(now=89.0) is None  # writing nothing after its result is no stall of training
    stall = f.stall(now=91.0)
    assert stall is not None and stall.reason == "no_exit"
    assert f.stall_event(stall)[1]["action"] == "end"  # never failed nor restarted: its outputs decide


def test_a_follow_that_re_attaches_judges_stalls_from_the_phase_it_kept(tmp_path: Path) -> None:
    from loraflow.running.following import FollowState

    state_file = tmp_path / "follow.json"
    first = follow(tmp_path, on_stall="fail")
    first.feed(line(event="phase", phase="training", total=10, start_step=0), ended=False, now=0.0)
    FollowState(offset=123, phase=first.phase).save(state_file)
    kept = FollowState.load(state_file)
    layout = JobLayout(str(tmp_path))
    again = TrainerFollow(spec("fail"), layout, BuiltinParser(), now=100.0, collect_every_s=15.0, phase=kept.phase)
    assert again.stall(now=150.0) is None
    stall = again.stall(now=161.0)  # no phase line comes again after the offset: the kept one counts
    assert stall is not None and stall.reason == "no_progress"


def test_a_spec_trains_here_or_on_its_lease(tmp_path: Path) -> None:
    from loraflow.engines import get_engine
    from loraflow.jobs.store import Store
    from loraflow.running.place import LocalPlace, RemotePlace, place_for

    layout = JobLayout(str(tmp_path))
    for provider, kind in (("local", LocalPlace), ("ssh", RemotePlace), ("vastai", RemotePlace)):
        s = spec(provider=provider)
        place = place_for(Store(), "job", s, layout, get_engine(s.engine.name), lambda *_: None)
        assert isinstance(place, kind) and place.can_hand_off is (kind is RemotePlace)
