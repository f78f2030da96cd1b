"""The job folder, the same shape on this machine and under `<root>/loraflow/<id>/` on a host."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# A two-expert LoRA (Wan 2.2 A14B): the high-noise expert's file, beside `<name>.safetensors` (the low-noise
# one) in the job folder, bundle and publish targets, and as this name in a checkpoint folder that holds a pair.
HIGH_NOISE = "_high_noise"
PAIR_FILE = "high_noise.safetensors"


@dataclass(frozen=True)
class JobLayout:
    root: str  # absolute path of the job folder on the host in question

    def _p(self, *parts: str) -> str:
        return str(PurePosixPath(self.root, *parts))

    @property
    def spec(self) -> str:
        return self._p("spec.yaml")

    @property
    def dataset(self) -> str:
        return self._p("dataset")

    @property
    def engine(self) -> str:
        return self._p("engine")

    @property
    def run(self) -> str:
        return self._p("run")

    @property
    def checkpoints(self) -> str:
        return self._p("checkpoints")

    @property
    def samples(self) -> str:
        return self._p("samples")

    @property
    def bundle(self) -> str:
        return self._p("bundle")

    @property
    def evaluation(self) -> str:
        """The result check's config, held-out images (holdout/), renders and scorecard.json."""
        return self._p("evaluation")

    @property
    def holdout(self) -> str:
        """Dataset images kept out of training (evaluation.holdout), with their captions."""
        return self._p("evaluation", "holdout")

    @property
    def output(self) -> str:
        """Where the engine writes: the job folder itself for builtin (checkpoints/, samples/ inside)."""
        return self.root

    @property
    def stop_request(self) -> str:
        return self._p("run", "stop-request")


def handoff_file(layout: JobLayout) -> Path:
    """Present while the worker's follower follows the job's remote trainer (the runner has handed it off)."""
    return Path(layout.run) / "handoff.json"
