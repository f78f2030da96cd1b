"""The Python API behind notebooks/flux_lora_vastai.ipynb: every cell is one call here (`nb.<step>`), so
the notebook holds settings and calls, never logic of its own."""

# holds settings and calls, never logic of its own.
#
# Each step fails fast with a NotebookStop naming what is wrong and what to do. A notebook imports this
# package as `nb` and calls `nb.<step>`; each step lives in the module named for it (settings, preflight,
# dataset_steps, cost, training, results), and these names are the notebook's interface.

from loraflow.notebook.cost import SECONDS_PER_STEP, cost_guard, cost_line, instance_price
from loraflow.notebook.dataset_steps import caption_preview, config_preview, dataset_gate
from loraflow.notebook.preflight import bootstrap, preflight
from loraflow.notebook.results import (
    best_checkpoint,
    download_link,
    package_and_publish,
    python_version_ok,
    samples_grid,
    verify,
)
from loraflow.notebook.settings import (
    VAST_ROOTS,
    Settings,
    ask_secret,
    build_spec,
    fetch_dataset,
    output_root,
    secrets_status,
)
from loraflow.notebook.stops import NotebookStop, install_error_display, show_error
from loraflow.notebook.training import RUN_ONLY_KEYS, follow, set_pause, spec_changes, start_or_resume

install_error_display()

__all__ = [
    "RUN_ONLY_KEYS",
    "SECONDS_PER_STEP",
    "VAST_ROOTS",
    "NotebookStop",
    "Settings",
    "ask_secret",
    "best_checkpoint",
    "bootstrap",
    "build_spec",
    "caption_preview",
    "config_preview",
    "cost_guard",
    "cost_line",
    "dataset_gate",
    "download_link",
    "fetch_dataset",
    "follow",
    "instance_price",
    "output_root",
    "package_and_publish",
    "preflight",
    "python_version_ok",
    "samples_grid",
    "secrets_status",
    "set_pause",
    "show_error",
    "spec_changes",
    "start_or_resume",
    "verify",
]
