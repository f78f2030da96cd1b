"""Dataset ingestion, quality gates, normalization, manifest and packing."""

from loraflow.dataset.findings import Finding, Report, Severity
from loraflow.dataset.pipeline import DatasetRun, check_dataset

__all__ = ["DatasetRun", "Finding", "Report", "Severity", "check_dataset"]
