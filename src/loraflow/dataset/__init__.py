"""The dataset pipeline: ingest a folder or archive, run the quality gates, caption what is missing,
normalize and write the manifest a trainer reads; the user's originals are never modified."""

from loraflow.dataset.pairs import pair_needs
from loraflow.dataset.pipeline import DatasetRun, check_dataset
from loraflow.media.findings import Finding, Report, Severity

__all__ = ["DatasetRun", "Finding", "Report", "Severity", "check_dataset", "pair_needs"]
