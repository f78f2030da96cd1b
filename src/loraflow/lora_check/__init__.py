"""The structural check of a delivered LoRA file: keys, shapes, alpha, finite values, and an update above
a floor against the base layers it adapts (docs/result-check.md). Pure file reading: no GPU, no torch."""

from loraflow.lora_check.base import BaseWeights, load_base
from loraflow.lora_check.check import (
    ABS_FLOOR,
    INERT,
    INVALID,
    OK,
    REL_FLOOR,
    Expectation,
    FileVerdict,
    check_file,
)
from loraflow.lora_check.expect import base_candidates, base_for, expectation

__all__ = [
    "ABS_FLOOR",
    "INERT",
    "INVALID",
    "OK",
    "REL_FLOOR",
    "BaseWeights",
    "Expectation",
    "FileVerdict",
    "base_candidates",
    "base_for",
    "check_file",
    "expectation",
    "load_base",
]
