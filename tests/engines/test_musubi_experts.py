"""Wan 2.2 A14B on musubi-tuner: the two experts as one job of two musubi runs (the high-noise expert over
timesteps 875-1000 for the first half of the steps, then the low-noise one over 0-875), what each run is
given, which run comes next from what is on disk, and how its console is counted."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from loraflow.engines.musubi import MusubiEngine
from loraflow.engines.musubi_files import segment_dir
from loraflow.engines.musubi_parser import MusubiParser
from loraflow.layout import JobLayout
from loraflow.spec import parse_spec

LAYOUT = JobLayout("/JOB")


def wan22(model: str = "wan2.2-t2v-a14b", steps: int = 40) -> object:
    return parse_spec({"name": "dancer", "dataset": {"path": "/data/clips", "trigger_word": "dnc"},
                       "base_model": model, "training": {"steps": steps}, "checkpointing": {"every_n_steps": 5}})


def value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def lora(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_blocks_0_self_attn_q.lora_down.weight": __import__("torch").zeros(2, 2)}, path)


def state(folder: Path) -> None:
    lora(folder / "model.safetensors")
    (folder / "random_states_0.pkl").write_bytes(b"\0")


def train_argv(spec: object, layout: JobLayout) -> tuple[str, list[str]]:
    parts = MusubiEngine().command(spec, layout, "python3").argv[2].split(" && ")
    return parts[0], parts[-1].split()


def test_each_expert_is_its_own_run_over_its_own_timesteps() -> None:
    files = MusubiEngine().render(wan22(steps=2000), LAYOUT, "j", "x")
    high, low = (json.loads(files[n])["args"] for n in ("args_high_noise.json", "args.json"))
    assert value(high, "--dit").endswith("wan2.2_t2v_high_noise_14B_fp16.safetensors")
    assert value(low, "--dit").endswith("wan2.2_t2v_low_noise_14B_fp16.safetensors")
    assert "--dit_high_noise" not in high + low  # musubi's shared-LoRA mode would give one file, not two
    assert (value(high, "--min_timestep"), value(high, "--max_timestep")) == ("875", "1000")
    assert (value(low, "--min_timestep"), value(low, "--max_timestep")) == ("0", "875")
    assert "--preserve_distribution_shape" in high and "--preserve_distribution_shape" in low
    assert value(high, "--max_train_steps") == value(low, "--max_train_steps") == "1000"
    assert (value(high, "--output_name"), value(high, "--output_dir")) == ("dancer_high_noise",
                                                                         "/JOB/musubi/from-00000000")
    assert (value(low, "--output_name"), value(low, "--output_dir")) == ("dancer", "/JOB/musubi/from-00001000")
    script = files["train.sh"]  # a user can run both by hand, in order
    assert script.index("wan2.2_t2v_high_noise_14B") < script.index("wan2.2_t2v_low_noise_14B")
    i2v = json.loads(MusubiEngine().render(wan22("wan2.2-i2v-a14b"), LAYOUT, "j", "x")["args.json"])["args"]
    assert value(i2v, "--max_timestep") == "900"  # musubi's I2V boundary


def test_the_next_run_follows_from_what_is_on_disk(tmp_path: Path) -> None:
    spec, layout, engine = wan22(), JobLayout(str(tmp_path / "job")), MusubiEngine()
    first, train = train_argv(spec, layout)
    assert "from step 0 of 40: the high-noise expert" in first
    assert value(train, "--max_train_steps") == "20" and "--resume" not in train
    # killed in the high-noise run: it resumes from its newest whole state, for the steps it has left
    state(Path(segment_dir(layout, 0)) / "dancer_high_noise-step00000010-state")
    resuming = "resuming from from-00000000/dancer_high_noise-step00000010-state at step 10"
    assert engine.prepare_resume(spec, layout)[-1] == resuming
    first, train = train_argv(spec, layout)
    assert "from step 10 of 40: the high-noise expert" in first
    assert value(train, "--max_train_steps") == "10" and value(train, "--output_dir") == segment_dir(layout, 10)
    assert value(train, "--output_name") == "dancer_high_noise"
    # the high-noise expert finished (its checkpoint at its last step counts, as a kill may come before the
    # final save): the low-noise expert starts afresh at step 20, never from the other expert's state
    lora(Path(segment_dir(layout, 10)) / "dancer_high_noise-step00000010.safetensors")
    first, train = train_argv(spec, layout)
    assert "from step 20 of 40: the low-noise expert" in first and "--resume" not in train
    assert value(train, "--dit").endswith("low_noise_14B_fp16.safetensors")
    assert (value(train, "--max_train_steps"), value(train, "--output_dir")) == ("20", segment_dir(layout, 20))
    state(Path(segment_dir(layout, 20)) / "dancer-step00000005-state")
    first, train = train_argv(spec, layout)
    assert "from step 25 of 40" in first and value(train, "--max_train_steps") == "15"
    assert value(train, "--resume").endswith("from-00000020/dancer-step00000005-state")
    assert engine.final_lora(spec, layout) == str(Path(segment_dir(layout, 20)) / "dancer.safetensors")


def test_progress_counts_across_both_runs_and_the_first_run_asks_for_the_next() -> None:
    parser = MusubiParser()
    log = (
        b"loraflow: musubi run from step 20 of 40: the low-noise expert (timesteps 0-875) as dancer\n"
        b"steps:  50%|#####     | 10/20 [00:10<00:10,  1.00s/it, avr_loss=0.1]\n"
    )
    progress = [e.data for e in parser.feed(log) + parser.flush() if e.type == "progress"]
    assert progress and progress[-1]["step"] == 30 and progress[-1]["total"] == 40
    assert not MusubiEngine().outcome(0, False, parser).more  # the low-noise run must write the final file
    high = MusubiParser()
    high.feed(b"loraflow: musubi run from step 0 of 40: the high-noise expert (timesteps 875-1000) as x\n"
              b"saving checkpoint: /JOB/musubi/from-00000000/dancer_high_noise.safetensors\n")
    outcome = MusubiEngine().outcome(0, False, high)
    assert outcome.more and not outcome.ok and "low-noise expert" in outcome.message
    assert not MusubiEngine().outcome(1, False, high).more  # a crash is a crash


def test_on_a_leased_host_each_run_is_chosen_from_this_machines_copy_of_its_folders(tmp_path: Path) -> None:
    """Which expert runs next, from which state, and where its final file lands are read from the host's run
    folders as mirrored into the job folder here (never from the host's paths on this machine's disk), and the
    launch names the host's paths; a new host is sent what that choice needs."""
    from loraflow.running.place import RemotePlace

    spec = parse_spec({"name": "dancer", "dataset": {"path": "/data/clips", "trigger_word": "dnc"},
                       "base_model": "wan2.2-t2v-a14b", "training": {"steps": 40},
                       "compute": {"provider": "ssh", "ssh": {"host": "127.0.0.1"}}})
    local, engine = JobLayout(str(tmp_path / "job")), MusubiEngine()
    place = RemotePlace(None, "j", spec, local, lambda *_: None)  # type: ignore[arg-type]
    place.lease.layout = lambda: JobLayout("/host/loraflow/j")  # type: ignore[method-assign] # not on this disk
    assert place.engine_layout(engine) == local
    high = Path(segment_dir(local, 0)) / "dancer_high_noise.safetensors"
    lora(high)
    # the high-noise expert finished, no low-noise save yet: a new host is sent that file alone and starts
    # the low-noise expert
    assert engine.resume_files(spec, local) == [str(high)]
    argv = [place.on_host(a) for a in engine.command(spec, place.engine_layout(engine), "python3").argv]
    assert "from step 20 of 40: the low-noise expert" in argv[2] and "--resume" not in argv[2]
    state(Path(segment_dir(local, 20)) / "dancer-step00000005-state")
    argv = [place.on_host(a) for a in engine.command(spec, place.engine_layout(engine), "python3").argv]
    assert "from step 25 of 40: the low-noise expert" in argv[2]
    assert "--resume /host/loraflow/j/musubi/from-00000020/dancer-step00000005-state" in argv[2]
    assert "--output_dir /host/loraflow/j/musubi/from-00000025" in argv[2] and local.root not in argv[2]
    assert place.on_host(engine.final_lora(spec, local)) == "/host/loraflow/j/musubi/from-00000020/dancer.safetensors"
    assert engine.resume_files(spec, local) == [str(Path(segment_dir(local, 20)) / "dancer-step00000005-state"),
                                                str(high)]
