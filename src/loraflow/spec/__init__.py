"""TrainSpec: the one description of a training job that every front door builds, and how one is read
(schema, secret detection, catalog defaults, hosted-engine refusals, error wording, parsing, loading)."""

# A minimal spec is three lines (name, dataset, base_model); everything else comes from the base-model
# catalog, the engine's overrides and an optional VRAM preset, merged *under* what the user wrote.
# Secrets never live here: they come from the environment (HF_TOKEN, VAST_API_KEY, ...).
#
# This package's public names are the spec's interface to the rest of loraflow; its modules each own one
# part: the sections (models, dataset, compute, targets), secret detection (secret_scan), catalog
# defaults (resolving), hosted-engine refusals (hosted), error wording (explain), parsing and loading.

from loraflow.spec.advice import advice
from loraflow.spec.compute import ComputeSpec, GpuRequirements, SshTarget
from loraflow.spec.dataset import CaptionPolicy, DatasetChecks, DatasetSpec
from loraflow.spec.evaluation import EvaluationSpec
from loraflow.spec.explain import explain
from loraflow.spec.hosted import refused_fields
from loraflow.spec.loading import load_spec, read_yaml
from loraflow.spec.models import (
    TRIGGER_PLACEHOLDER,
    BudgetSpec,
    CheckpointSpec,
    EngineName,
    EngineSpec,
    MonitorSpec,
    NetworkSpec,
    OutputSpec,
    SamplingSpec,
    TrainingSpec,
    TrainSpec,
    WandbSpec,
)
from loraflow.spec.parsing import parse_spec
from loraflow.spec.resolving import resolve
from loraflow.spec.starter import STARTER_SPEC
from loraflow.spec.strict import Strict
from loraflow.spec.targets import (
    ComfyDeployTarget,
    HuggingFaceTarget,
    NotificationTarget,
    PublishSpec,
    PublishTarget,
    S3Target,
)

__all__ = [
    "STARTER_SPEC",
    "TRIGGER_PLACEHOLDER",
    "BudgetSpec",
    "CaptionPolicy",
    "CheckpointSpec",
    "ComfyDeployTarget",
    "ComputeSpec",
    "DatasetChecks",
    "DatasetSpec",
    "EngineName",
    "EngineSpec",
    "EvaluationSpec",
    "GpuRequirements",
    "HuggingFaceTarget",
    "MonitorSpec",
    "NetworkSpec",
    "NotificationTarget",
    "OutputSpec",
    "PublishSpec",
    "PublishTarget",
    "S3Target",
    "SamplingSpec",
    "SshTarget",
    "Strict",
    "TrainSpec",
    "TrainingSpec",
    "WandbSpec",
    "advice",
    "explain",
    "load_spec",
    "parse_spec",
    "read_yaml",
    "refused_fields",
    "resolve",
]
