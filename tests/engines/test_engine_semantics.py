"""What the pinned engines do with a rendered value, judged by their own code (issue 28): ai-toolkit's gradient
clipping, caption dropout and tag shuffling; kohya's and musubi's final sample round; small images' size.

Facts from the engines at their pins (ai-toolkit 27a03a91, sd-scripts 48d368fa, musubi-tuner 30c658c4):
SDTrainer.hook_train_loop calls `accelerator.clip_grad_norm_(params, max_grad_norm)` after backpropagating
every accumulated micro-batch unscaled, unless the optimizer is adafactor; its config is read with yaml's
SafeLoader (plus an exponent resolver); get_caption returns '' for a dropped caption and the trainer then
injects `trigger_word` into it; shuffle_tokens shuffles every tag; sd-scripts and musubi sample only on
`global_step % sample_every_n_steps == 0`.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import pytest
import torch
import yaml

from loraflow.engines.aitoolkit import AitkEngine
from loraflow.errors import SpecError
from loraflow.layout import JobLayout
from loraflow.spec import parse_spec

LAYOUT = JobLayout("/work/jobs/abc")


def spec(engine: str = "ai-toolkit", base_model: str = "flux-dev", **sections: dict):
    raw: dict = {
        "name": "m1l4dy",
        "dataset": {"path": "/data/photos", "trigger_word": "m1l4dy"},
        "base_model": base_model,
        "engine": engine,
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_spec(raw)


def refused(engine: str, **sections: dict) -> list[str]:
    with pytest.raises(SpecError) as err:
        spec(engine, **sections)
    return err.value.problems


def aitk_process(s) -> dict:
    """The rendered config as ai-toolkit reads it (its loader is yaml's SafeLoader with one more resolver)."""
    text = AitkEngine().render(s, LAYOUT, "j", "black-forest-labs/FLUX.1-dev")["aitk_config.yaml"]
    return yaml.load(text, Loader=yaml.SafeLoader)["config"]["process"][0]


def clipped(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """A gradient after the clip SDTrainer applies (accelerate calls torch's clip_grad_norm_)."""
    param = torch.nn.Parameter(torch.zeros_like(grad))
    param.grad = grad.clone()
    torch.nn.utils.clip_grad_norm_([param], max_norm)
    return param.grad


def test_aitoolkit_no_clipping_is_not_a_zero_norm() -> None:
    """max_grad_norm 0 means no clipping; given to SDTrainer as 0 it scales every gradient to zero."""
    grad = torch.tensor([3.0, 4.0])
    assert torch.equal(clipped(grad, 0.0), torch.zeros(2))  # what a rendered 0 would do: nothing trains
    rendered = aitk_process(spec(training={"max_grad_norm": 0}))["train"]["max_grad_norm"]
    assert math.isinf(rendered)
    assert torch.equal(clipped(grad, rendered), grad)
    assert aitk_process(spec(training={"max_grad_norm": 0.5}))["train"]["max_grad_norm"] == 0.5


def test_aitoolkit_clip_limit_is_scaled_to_the_accumulated_sum() -> None:
    """ai-toolkit clips the sum of N micro-batch gradients; builtin and kohya clip their mean. With the limit
    scaled by N, ai-toolkit's clipped sum is N times the mean clipped at the spec's limit."""
    micro = [torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0]), torch.tensor([0.0, 6.0]), torch.tensor([2.0, 0.0])]
    train = aitk_process(spec(training={"max_grad_norm": 1.0, "gradient_accumulation": 4}))["train"]
    assert train["gradient_accumulation"] == 4 and train["max_grad_norm"] == 4
    mean_clipped = clipped(sum(micro) / 4, 1.0)
    assert torch.allclose(clipped(sum(micro), train["max_grad_norm"]), 4 * mean_clipped)


def test_aitoolkit_refuses_clipping_adafactor_by_name() -> None:
    problems = refused("ai-toolkit", training={"optimizer": "adafactor"})  # max_grad_norm 1.0 by default
    assert len(problems) == 1 and problems[0].startswith("training.max_grad_norm: engine ai-toolkit cannot")
    assert "never clips gradients for Adafactor" in problems[0] and "Fix: set training.max_grad_norm: 0" in problems[0]
    train = aitk_process(spec(training={"optimizer": "adafactor", "max_grad_norm": 0}))["train"]
    assert train["optimizer"] == "adafactor" and math.isinf(train["max_grad_norm"])
    spec("kohya", training={"optimizer": "adafactor"})  # kohya clips every optimizer's gradients


def test_aitoolkit_dropped_caption_is_empty_and_embeddings_stay_cached() -> None:
    """ai-toolkit puts its trigger_word back into a dropped caption (cached: the cached dropout embedding is
    of the trigger): with dropout, the trigger reaches it only through the prepared captions."""
    p = aitk_process(spec(dataset={"captions": {"dropout_rate": 0.1}}))
    assert p["trigger_word"] is None and p["datasets"][0]["caption_dropout_rate"] == 0.1
    assert p["train"]["cache_text_embeddings"] is True
    p = aitk_process(spec(dataset={"captions": {"dropout_rate": 0.0}}))
    assert p["trigger_word"] == "m1l4dy" and p["train"]["cache_text_embeddings"] is True
    shuffled = aitk_process(spec(dataset={"captions": {"dropout_rate": 0.0, "shuffle_tags": True, "keep_tokens": 0}}))
    assert shuffled["train"]["cache_text_embeddings"] is False  # a cached caption would freeze the order


def test_aitoolkit_refuses_keep_tokens_with_shuffled_tags() -> None:
    problems = refused("ai-toolkit", dataset={"captions": {"shuffle_tags": True}})  # keep_tokens 1 by default
    assert len(problems) == 1 and problems[0].startswith("dataset.captions.keep_tokens: engine ai-toolkit")
    assert "shuffles every tag, the trigger word too" in problems[0]
    p = aitk_process(spec(dataset={"captions": {"shuffle_tags": True, "keep_tokens": 0}}))
    assert p["datasets"][0]["shuffle_tokens"] is True
    spec("kohya", dataset={"captions": {"shuffle_tags": True, "keep_tokens": 2}})  # kohya keeps them in place


@pytest.mark.parametrize("engine", ["kohya", "musubi"])
def test_final_sample_round_off_the_cadence_is_refused(engine: str) -> None:
    """sd-scripts and musubi sample only on multiples of --sample_every_n_steps: 1000 steps sampled every 300
    would end with no final round, so at_end is refused by name with the ways to get one."""
    base = "wan2.1-t2v-1.3b" if engine == "musubi" else "flux-dev"

    def make(training: dict, sampling: dict):
        captions = {"captions": {"dropout_rate": 0.0}}  # musubi has no caption dropout
        return spec(engine, base_model=base, dataset=captions, training=training, sampling=sampling)

    with pytest.raises(SpecError) as err:
        make({"steps": 1000}, {"every_n_steps": 300})
    assert [p.split(":")[0] for p in err.value.problems] == ["sampling.at_end"]
    assert "step 1000 would get no final round" in err.value.problems[0]
    assert "multiple of 300 (e.g. 900)" in err.value.problems[0]
    make({"steps": 900}, {"every_n_steps": 300})
    make({"steps": 1000}, {"every_n_steps": 300, "at_end": False})
    make({"steps": 1000}, {"every_n_steps": 0})  # the end only: --sample_every_n_steps 1000
    make({"steps": 60}, {"every_n_steps": 250})  # no round on the cadence: the end only, as above


def test_kohya_final_round_lands_on_the_last_step(tmp_path: Path) -> None:
    """What is accepted samples at the last step by sd-scripts' own rule (the stand-in applies it)."""
    from loraflow.engines.kohya_config import train_args

    s = spec("kohya", training={"steps": 900}, sampling={"every_n_steps": 300})
    args = train_args(s, LAYOUT)
    every = int(args[args.index("--sample_every_n_steps") + 1])
    assert [step for step in range(1, 901) if step % every == 0][-1] == 900
    short = train_args(spec("kohya", training={"steps": 60}, sampling={"every_n_steps": 250}), LAYOUT)
    assert short[short.index("--sample_every_n_steps") + 1] == "60"
    with pytest.raises(SpecError):
        spec("kohya", training={"steps": None, "epochs": 3}, sampling={"every_n_steps": 300})


AITK = Path(os.environ.get("LORAFLOW_AITOOLKIT_DIR", "/nonexistent"))


@pytest.mark.skipif(
    not (AITK / "toolkit/buckets.py").is_file(),
    reason="set LORAFLOW_AITOOLKIT_DIR to an ai-toolkit checkout (loraflow is checked against 27a03a91)",
)
def test_small_images_train_at_their_own_size_on_ai_toolkit_as_on_kohya() -> None:
    """ai-toolkit's own bucket function (27a03a91) never enlarges an image past its pixel count; kohya is
    rendered `bucket_no_upscale = true`, which does the same, so a small image trains at about its own size
    on both (each rounds the sides to 64)."""
    import tomllib

    from loraflow.engines.kohya_config import dataset_toml

    module_spec = importlib.util.spec_from_file_location("aitk_buckets", AITK / "toolkit/buckets.py")
    assert module_spec and module_spec.loader
    buckets = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(buckets)
    small = buckets.get_bucket_for_image_size(640, 480, resolution=1024, divisibility=64)
    assert small["width"] * small["height"] <= 640 * 480 and (small["width"], small["height"]) == (640, 448)
    large = buckets.get_bucket_for_image_size(2048, 1536, resolution=1024, divisibility=64)
    assert large["width"] * large["height"] <= 1024 * 1024 < 2 * large["width"] * large["height"]
    datasets = tomllib.loads(dataset_toml(spec("kohya"), LAYOUT))["datasets"]
    assert all(d["bucket_no_upscale"] is True and d["bucket_reso_steps"] == 64 for d in datasets)


def test_resumed_musubi_run_still_samples_at_its_last_step() -> None:
    """musubi restarts its step count on resume (it trains the steps left, from 0): the end-only round must be
    at the run's last step, not at the whole job's step count, which a resumed run never reaches."""
    from loraflow.engines.musubi_config import train_args

    s = spec("musubi", "wan2.1-t2v-1.3b", dataset={"captions": {"dropout_rate": 0.0}}, training={"steps": 60},
             sampling={"every_n_steps": 0})
    first, resumed = train_args(s, LAYOUT), train_args(s, LAYOUT, offset=20)
    assert first[first.index("--sample_every_n_steps") + 1] == "60"
    assert resumed[resumed.index("--max_train_steps") + 1] == "40"
    assert resumed[resumed.index("--sample_every_n_steps") + 1] == "40"
