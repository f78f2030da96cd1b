"""compute.gpus on the external engines (issue 31): kohya and musubi are started by the real `accelerate
launch --multi_gpu --num_processes N` (torchrun underneath), and their stand-ins record the process group they
find; ai-toolkit, whose data loader is not split across processes at its pin, refuses N > 1 by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from loraflow.engines import kohya, musubi
from loraflow.errors import SpecError
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.spec import parse_spec
from loraflow.testing.launch_record import launches
from tests.conftest import EXAMPLES
from tests.engines.test_engine_runs import engines_dir  # noqa: F401  (the fixture)
from tests.engines.test_musubi_runs import musubi_dir  # noqa: F401  (the fixture)

LAYOUT = JobLayout("/work/jobs/abc")


def raw_spec(engine: str, gpus: int, **extra: object) -> dict:
    base = "wan2.1-t2v-1.3b" if engine == "musubi" else "flux-dev"
    return {
        "name": "multi",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": base,
        "engine": {"name": engine, **extra},
        "compute": {"gpus": gpus},
        "training": {"steps": 6, "resolution": [256]},
        "sampling": {"prompts": [], "at_end": False},
        "checkpointing": {"every_n_steps": 3, "keep_last": 4},
    }


def launch_line(engine: str, gpus: int) -> list[str]:
    spec = parse_spec(raw_spec(engine, gpus))
    if engine == "kohya":
        return kohya.KohyaEngine().command(spec, LAYOUT, "python3").argv
    shell = musubi.MusubiEngine().command(spec, LAYOUT, "python3").argv[2]
    return shell.split("exec ", 1)[1].split()


@pytest.mark.parametrize("engine", ["kohya", "musubi"])
def test_launch_line_names_one_process_per_gpu(engine: str) -> None:
    one, four = launch_line(engine, 1), launch_line(engine, 4)
    assert one[one.index("--num_processes") + 1] == "1" and "--multi_gpu" not in one
    assert four[:3] == ["python3", "-m", "accelerate.commands.launch"]
    assert four[four.index("--num_processes") + 1] == "4" and "--multi_gpu" in four
    assert four[four.index("--main_process_port") + 1] == "0"  # a free port: two jobs on one box never collide


def test_ai_toolkit_refuses_several_gpus_by_name() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(raw_spec("ai-toolkit", 2))
    [problem] = [p for p in err.value.problems if p.startswith("compute.gpus")]
    assert "engine ai-toolkit cannot honour" in problem and "27a03a91" in problem and "compute.gpus: 1" in problem
    parse_spec(raw_spec("ai-toolkit", 1))


def test_plain_python_launcher_cannot_start_several_processes() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(raw_spec("kohya", 2, options={"launcher": "python"}))
    assert any(p.startswith("compute.gpus: engine kohya cannot honour") for p in err.value.problems)


def test_gpus_validated_and_old_count_key_read() -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(raw_spec("kohya", 0))
    assert any("compute.gpus" in p for p in err.value.problems)
    legacy = {**raw_spec("kohya", 1), "compute": {"gpu": {"count": 2}}}
    assert parse_spec(legacy).compute.gpus == 2
    with pytest.raises(SpecError):
        parse_spec({**legacy, "compute": {"gpus": 4, "gpu": {"count": 2}}})


@pytest.mark.timeout(900)  # the real launcher starts two processes on a busy machine
@pytest.mark.parametrize("engine", ["kohya", "musubi"])
def test_two_gpu_job_runs_under_the_real_launcher(
    engine: str, tmp_path: Path, engines_dir: Path, musubi_dir: Path, cli  # noqa: F811
) -> None:
    raw = raw_spec(engine, 2)
    raw["engine"]["options"] = {"path": str(musubi_dir if engine == "musubi" else engines_dir / "kohya")}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = cli("train", path)
    assert result.code == 0, result.out + result.err
    job = Store().list_jobs()[0]
    assert job.state is JobState.COMPLETED and job.step == 6
    records = [r for folder in {p.parent for p in job.folder.rglob("launch-rank*.json")} for r in launches(folder)]
    assert [(r["rank"], r["world_size"], r["torchrun"]) for r in records] == [(0, 2, True), (1, 2, True)], records
    assert len({r["master_port"] for r in records}) == 1 and records[0]["master_port"] != "29500"
    assert json.loads(json.dumps(records))[0]["argv"][0].endswith(
        "flux_train_network.py" if engine == "kohya" else "wan_train_network.py"
    )


def test_builtin_is_launched_by_accelerate_and_a_stop_through_the_launcher_counts_as_a_stop() -> None:
    from loraflow.engines.builtin import BuiltinEngine, trainer_argv
    from loraflow.monitor.builtin_parser import BuiltinParser

    assert trainer_argv("py", 1, "engine/config.json") == ["py", "-m", "loraflow.trainer", "engine/config.json"]
    four = trainer_argv("py", 4, "engine/config.json")
    assert four[:3] == ["py", "-m", "accelerate.commands.launch"] and four[-3:] == ["-m", "loraflow.trainer",
                                                                                    "engine/config.json"]
    assert four[four.index("--num_processes") + 1] == "4" and "--multi_gpu" in four
    engine, parser = BuiltinEngine(), BuiltinParser()
    parser.feed(b'LORAFLOW {"event": "progress", "step": 3, "total": 9, "loss": 0.5}\n')
    assert not engine.outcome(1, False, parser).stopped  # a crash under the launcher stays a crash
    # rank 0 paused with a checkpoint (exit 75); torchrun reports any failed rank as 1
    parser.feed(b'LORAFLOW {"event": "stopped", "step": 3, "total": 9}\n')
    assert engine.outcome(1, False, parser).stopped and engine.outcome(75, False, None).stopped
    parser.feed(b'LORAFLOW {"event": "phase", "phase": "starting"}\n')  # a later run started: its exit is its own
    assert not engine.outcome(1, False, parser).stopped
