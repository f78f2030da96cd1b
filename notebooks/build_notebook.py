"""Writes notebooks/flux_lora_vastai.ipynb (without outputs). Edit the cells here, then run this script."""

from __future__ import annotations

from pathlib import Path

import nbformat

md, code = nbformat.v4.new_markdown_cell, nbformat.v4.new_code_cell

CELLS = [
    md(
        "# Flux LoRA on a rented GPU (Vast.ai) with loraflow\n\n"
        "Edit **only** the settings cell, then *Run All*. Training runs detached: closing this tab or restarting "
        "the kernel does not stop it — re-run the **Train** cell to re-attach, or to resume after an interruption. "
        "Tokens come from the environment (or a hidden prompt); they are never printed or stored in this notebook."
    ),
    md("## 1. Settings"),
    code(
        "from loraflow import notebook as nb\n\n"
        "settings = nb.Settings(\n"
        '    name="my-lora",\n'
        '    dataset="/workspace/dataset.zip",        # an uploaded zip, a folder, or a path\n'
        '    trigger_word="ohwx",\n'
        '    base_model="flux-dev",                    # flux-dev | flux-schnell | tiny-flux (CPU test)\n'
        '    engine="ai-toolkit",                      # ai-toolkit | builtin\n'
        "    steps=2000, rank=16, learning_rate=1e-4, resolution=[512, 768, 1024],\n"
        "    gpus=1,                                    # this machine's GPUs to train on, one process each\n"
        '    sample_prompts=["a photo of [trigger] in a cafe", "[trigger] as an oil painting"],\n'
        "    nsfw=False,                                # labels only; nothing is filtered\n"
        '    caption_backend="existing",               # existing | template\n'
        "    resume=True,                               # continue an interrupted job with the same name and settings\n"
        "    max_usd=5.0, max_hours=4.0, price_usd_per_hour=None,\n"
        "    hf_repo=None, s3_bucket=None, wandb=False,\n"
        "    output_root=None,                          # None: /workspace/loraflow on Vast.ai\n"
        ")\n"
        "ASK_FOR_TOKENS = True    # hidden prompt for HF_TOKEN when it is not in the environment\n"
        "REQUIRE_GPU = True\n"
        "STOP_AFTER_STEP = None   # pause the run at this step (re-run Train to continue)",
        metadata={"tags": ["parameters"]},
    ),
    md("## 2. Preflight: GPU, CUDA, VRAM, disk, mounts, model access"),
    code(
        'if ASK_FOR_TOKENS:\n    nb.ask_secret("HF_TOKEN")\n'
        "facts = nb.preflight(settings, require_gpu=REQUIRE_GPU)\nfor key, value in facts.items():\n"
        '    print(f"{key:14} {value}")'
    ),
    md("## 3. Bootstrap: the engine at its pinned version (safe to re-run)"),
    code("print(nb.bootstrap(settings))"),
    md("## 4. Dataset and quality gate"),
    code(
        "report = nb.dataset_gate(settings)\n"
        'print(f"{report.usable_images} usable images, {report.captioned} with captions")\n'
        'for finding in report.findings:\n    if finding.severity.value != "info":\n        print(finding.line())'
    ),
    md("## 5. Captions: what training will see"),
    code("from IPython.display import HTML, display\n\ndisplay(HTML(nb.caption_preview(settings)))"),
    md("## 6. The engine's config"),
    code(
        'for name, text in nb.config_preview(settings).items():\n    if not name.startswith("setup_"):\n'
        '        print(f"--- {name} ---\\n{text}")'
    ),
    md("## 7. Cost and time guard"),
    code("estimate = nb.cost_guard(settings)\nprint(nb.cost_line(estimate))"),
    md("## 8. Train (re-run this cell to re-attach or to resume)"),
    code(
        "job_id = nb.start_or_resume(settings, stop_at_step=STOP_AFTER_STEP)  # says which job and why\n"
        "state = nb.follow(job_id, stop_at_step=STOP_AFTER_STEP)"
    ),
    md("## 9. Samples"),
    code(
        'if state not in ("completed", "awaiting_approval"):\n'
        '    raise nb.NotebookStop(f"training is {state}", fix="re-run the Train cell to resume it")\n'
        "from IPython.display import Image\n\ngrid = nb.samples_grid(job_id)\n"
        "if grid:\n    display(Image(filename=str(grid)))"
    ),
    md("## 10. Package and publish"),
    code(
        "from IPython.display import FileLink\n\nresult = nb.package_and_publish(job_id)\n"
        'print("bundle:", result["bundle"], f"({result[\'size_mb\']} MB)")\ndisplay(FileLink(result["link"]))\n'
        'for target in result["published"]:\n    print("published:", target.get("url") or target.get("bucket"))'
    ),
    md("## 11. Verification"),
    code("print(nb.verify(job_id))"),
]


def main() -> None:
    notebook = nbformat.v4.new_notebook(cells=CELLS)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, Path(__file__).with_name("flux_lora_vastai.ipynb"))


if __name__ == "__main__":
    main()
