"""Dataset ingestion, quality gates, normalization, manifest and packing."""

from loraflow.dataset.pipeline import DatasetRun, check_dataset
from loraflow.media.findings import Finding, Report, Severity

__all__ = ["DatasetRun", "Finding", "Report", "Severity", "check_dataset"]
