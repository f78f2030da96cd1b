"""Engine logs in each engine's exact format parse into the right events, whatever the chunking."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.cli.engine_cmd import parse_log, summarize

FIX = Path(__file__).parent / "fixtures"
NAME = "my_first_flux_lora_v1"


def events(engine: str, name: str, chunk: int = 10_000) -> list[tuple[str, dict]]:
    from loraflow.engines.aitoolkit_parser import AitkParser
    from loraflow.engines.kohya_parser import KohyaParser

    data = (FIX / name).read_bytes()
    parser = AitkParser(NAME) if engine == "ai-toolkit" else KohyaParser()
    out = []
    for i in range(0, len(data), chunk):
        out += parser.feed(data[i : i + chunk])
    out += parser.flush()
    return [(e.type, e.data) for e in out]


@pytest.mark.parametrize("chunk", [1, 13, 4096])
def test_aitoolkit_run(chunk: int) -> None:
    evs = events("ai-toolkit", "aitk_run.log", chunk)
    progress = [d for t, d in evs if t == "progress"]
    # an excerpt: a bar line whose count moved past a step whose own loss line is not in the log still reports
    # that step, without a loss
    assert [p["step"] for p in progress] == [1, 249, 250, 999, 1000, 1999, 2000]
    assert [p["step"] for p in progress if "loss" not in p] == [249, 999, 1999]
    progress = [p for p in progress if "loss" in p]
    assert progress[0] == {
        "step": 1,
        "total": 2000,
        "elapsed_s": 12.0,
        "eta_s": 24000.0,
        "rate": round(1 / 12.01, 4),
        "lr": 1e-4,
        "loss": 0.4101,
    }
    assert progress[-1]["rate"] == 1.2 and progress[-1]["loss"] == 0.2512 and progress[-1]["eta_s"] == 0.0
    # saved after loop index 250, the 251st step (the bar moves to 251 after the save)
    assert ("checkpoint.saved", {"step": 251, "path": f"output/{NAME}/{NAME}_000000250.safetensors"}) in evs
    assert [d["phase"] for t, d in evs if t == "phase"] == [
        "starting",
        "loading_model",
        "loading_model",
        "loading_model",
        "caching",
        "caching",
    ]
    assert not [t for t, _ in evs if t == "error"]
    assert any(t == "log" and d.get("final") for t, d in evs)


def test_aitoolkit_resume_ctrl_c_oom_and_401() -> None:
    resumed = events("ai-toolkit", "aitk_resume.log")
    assert ("resumed", {"step": 750}) in resumed
    assert [d["step"] for t, d in resumed if t == "progress"] == [751, 752]
    stopped = events("ai-toolkit", "aitk_ctrlc.log")
    assert stopped[-1] == ("stopped", {"step": 41})
    oom = [d for t, d in events("ai-toolkit", "aitk_oom.log") if t == "error"]
    assert len(oom) == 1 and oom[0]["code"] == "oom" and "vram_preset" in oom[0]["hint"]
    assert oom[0]["message"].startswith("CUDA out of memory")
    auth = [d for t, d in events("ai-toolkit", "aitk_hf401.log") if t == "error"]
    assert len(auth) == 1 and auth[0]["code"] == "hf_gated" and "accept its license" in auth[0]["hint"]


def write_loss_log(path: Path, indexes: range, total: int) -> None:
    """loss_log.db as ai-toolkit writes it: rows named by the loop index, full-precision values."""
    import sqlite3

    from loraflow.testing.aitoolkit_standin import loss_at

    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE steps (step INTEGER PRIMARY KEY, wall_time REAL NOT NULL)")
    conn.execute("CREATE TABLE metrics (step INTEGER, key TEXT, value_real REAL, value_text TEXT)")
    for i in indexes:
        conn.execute("INSERT INTO steps VALUES (?, 0)", (i,))
        conn.execute("INSERT INTO metrics VALUES (?, 'loss/loss', ?, NULL)", (i, loss_at(i, total)))
        conn.execute("INSERT INTO metrics VALUES (?, 'learning_rate', 1e-4, NULL)", (i,))
    conn.commit()
    conn.close()


@pytest.mark.parametrize("chunk", [1, 4096])
def test_aitoolkit_loss_belongs_to_its_step_when_steps_are_fast(chunk: int, tmp_path: Path) -> None:
    """Steps under 0.1 s apart: tqdm redraws the new loss at the old count and skips some count redraws
    (real output of the 27a03a91 loop, 20 steps of 0.06 s); each step must carry its own loss."""
    from loraflow.testing.aitoolkit_standin import loss_at

    evs = events("ai-toolkit", "aitk_fast.log", chunk)
    progress = [d for t, d in evs if t == "progress"]
    assert [p["step"] for p in progress] == list(range(1, 21))
    for p in progress:  # step N is loop index N - 1; the bar shows the loss to 4 digits
        assert f"{p['loss']:.3e}" == f"{loss_at(p['step'] - 1, 20):.3e}", p
    # with loss_log.db (indexed by loop index, no row for a run's first step), the exact values
    db = tmp_path / "loss_log.db"
    write_loss_log(db, range(1, 20), 20)
    from loraflow.engines.aitoolkit_parser import AitkParser

    parser = AitkParser(NAME, loss_db=db)
    data = (FIX / "aitk_fast.log").read_bytes()
    exact = [e.data for e in [*parser.feed(data), *parser.flush()] if e.type == "progress"]
    assert [p["step"] for p in exact] == list(range(1, 21))
    assert exact[0]["loss"] == 0.5  # no row for index 0: the bar's value
    assert all(p["loss"] == loss_at(p["step"] - 1, 20) and p["lr"] == 1e-4 for p in exact)


def test_aitoolkit_loss_log_row_left_from_before_a_resume_is_not_used(tmp_path: Path) -> None:
    from loraflow.engines.aitoolkit_parser import AitkParser

    db = tmp_path / "loss_log.db"
    write_loss_log(db, range(1, 20), 40)  # other values: rows of an earlier run not yet rewritten
    parser = AitkParser(NAME, loss_db=db)
    data = (FIX / "aitk_fast.log").read_bytes()
    from loraflow.testing.aitoolkit_standin import loss_at

    progress = [e.data for e in [*parser.feed(data), *parser.flush()] if e.type == "progress"]
    assert all(f"{p['loss']:.3e}" == f"{loss_at(p['step'] - 1, 20):.3e}" for p in progress)


def test_aitoolkit_checkpoint_is_named_by_the_steps_it_holds_and_resume_repeats_nothing() -> None:
    """`_000000010` is saved after the 11th step; the resumed run's first bar line shows the resume step
    again (no new step), and the bar then counts on from it."""
    from loraflow.testing.aitoolkit_standin import loss_at

    run = events("ai-toolkit", "aitk_fast.log")
    assert [d["step"] for t, d in run if t == "checkpoint.saved"] == [11]
    saved = next(i for i, (t, _) in enumerate(run) if t == "checkpoint.saved")
    assert max(d["step"] for t, d in run[:saved] if t == "progress") <= 11  # saved before the bar moves on
    resumed = events("ai-toolkit", "aitk_fast_resume.log")
    assert ("resumed", {"step": 11}) in resumed
    steps = [d["step"] for t, d in resumed if t == "progress"]
    assert steps == list(range(12, 21))  # not 11 twice
    losses = {d["step"]: d["loss"] for t, d in resumed if t == "progress"}
    assert all(f"{v:.3e}" == f"{loss_at(s - 1, 20):.3e}" for s, v in losses.items())


@pytest.mark.parametrize("chunk", [1, 7, 100_000])
def test_kohya_run_with_wrapped_lines(chunk: int) -> None:
    evs = events("kohya", "kohya_run.log", chunk)
    progress = [d for t, d in evs if t == "progress"]
    assert [p["step"] for p in progress] == [17, 100, 3200]  # the nameless sampling bar is not ours
    assert progress[0] == {
        "step": 17,
        "total": 3200,
        "elapsed_s": 116.0,
        "eta_s": 21802.0,
        "rate": round(1 / 6.84, 4),
        "loss": 0.343,
    }
    assert (
        "checkpoint.saved",
        {"step": 100, "path": "/workspace/outputs/mylora/mylora-step00000100.safetensors"},
    ) in evs
    assert [d["phase"] for t, d in evs if t == "phase"] == ["preparing", "preparing", "caching", "training"]
    assert not [t for t, _ in evs if t == "error"]


def test_kohya_resume_keeps_the_cumulative_step() -> None:
    evs = events("kohya", "kohya_resume.log")
    assert ("resumed", {"step": 800}) in evs
    progress = [d for t, d in evs if t == "progress"]
    assert [(p["step"], p["total"]) for p in progress] == [(801, 3200), (802, 3200)]
    logs = [d["message"] for t, d in evs if t == "log"]
    # the wrapped Rich record was joined back: the path is whole
    assert "resume training from local state: /workspace/outputs/mylora/mylora-step00000800-state" in logs
    assert (
        "checkpoint.saved",
        {"step": 900, "path": "/workspace/outputs/mylora/mylora-step00000900.safetensors"},
    ) in evs


def test_kohya_oom() -> None:
    errors = [d for t, d in events("kohya", "kohya_oom.log") if t == "error"]
    assert errors[0]["code"] == "oom" and "vram_preset" in errors[0]["hint"]


def test_logs_parse_cli(cli, tmp_path: Path) -> None:
    result = cli("logs", "parse", "--engine", "ai-toolkit", FIX / "aitk_run.log", "--plot", tmp_path / "loss.png")
    assert result.code == 0, result.err
    assert "steps 2000/2000, final loss 0.2512" in result.out and "checkpoints [251]" in result.out
    assert (tmp_path / "loss.png").stat().st_size > 1000
    kohya = cli("logs", "parse", "--engine", "kohya", FIX / "kohya_oom.log")
    assert "CUDA out of memory" in kohya.out
    as_json = cli("logs", "parse", "--engine", "kohya", FIX / "kohya_resume.log", "--json")
    assert '"type": "resumed", "step": 800' in as_json.out
    db = tmp_path / "loss_log.db"
    write_loss_log(db, range(1, 20), 20)
    exact = cli("logs", "parse", "--engine", "ai-toolkit", FIX / "aitk_fast.log", "--loss-db", db, "--json")
    from loraflow.testing.aitoolkit_standin import loss_at

    assert '"step": 20, ' in exact.out and f'"loss": {loss_at(19, 20)}' in exact.out  # loss_log.db's value
    summary = summarize([])
    assert summary["steps"] == 0
    assert parse_log("builtin", b"", "") == []
