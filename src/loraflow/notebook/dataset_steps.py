"""Steps 4-6: the dataset's checks, a preview of its captions, and the engine config about to run."""

from __future__ import annotations

import html
import time
from typing import Any

from loraflow.notebook.settings import Settings, build_spec, output_root
from loraflow.notebook.stops import NotebookStop


def dataset_gate(settings: Settings) -> Any:
    from loraflow.dataset import DatasetRun

    spec = build_spec(settings)
    d = spec.dataset
    report = DatasetRun(d.path, d.checks, d.captions, d.trigger_word, d.caption_extension).check()
    lines = [f.line() for f in report.findings if f.severity.value != "info"]
    if not report.ok:
        raise NotebookStop("the dataset is not fit to train:\n" + "\n".join(lines), fix="fix the files listed")
    return report


def caption_preview(settings: Settings, limit: int = 12) -> str:
    """An HTML grid of the prepared images with their final captions (what training will see)."""
    import base64
    import io

    from PIL import Image

    from loraflow.dataset import DatasetRun

    spec = build_spec(settings)
    d = spec.dataset
    out = output_root(settings) / "preview" / f"{spec.name}-{int(time.time())}"
    DatasetRun(d.path, d.checks, d.captions, d.trigger_word, d.caption_extension).prepare(out)
    import json

    cells = []
    for item in json.loads((out / "manifest.json").read_text())["files"][:limit]:
        img = Image.open(out / item["name"]).convert("RGB")
        img.thumbnail((160, 160))
        buf = io.BytesIO()
        img.save(buf, format="JPEG")
        data = base64.b64encode(buf.getvalue()).decode()
        cells.append(
            f'<figure style="display:inline-block;width:170px;margin:4px;vertical-align:top">'
            f'<img src="data:image/jpeg;base64,{data}"/><figcaption style="font-size:11px">'
            f"{html.escape(item['caption'])}</figcaption></figure>"
        )
    return "<div>" + "".join(cells) + "</div>"


def config_preview(settings: Settings) -> dict[str, str]:
    from loraflow.cli.engine_cmd import PREVIEW_ROOT
    from loraflow.engines import get_engine
    from loraflow.layout import JobLayout

    spec = build_spec(settings)
    entry = spec.catalog_entry
    model = entry.hub_id if spec.base_model == entry.id and entry.hub_id else spec.base_model
    return get_engine(spec.engine.name).render(spec, JobLayout(PREVIEW_ROOT), "preview", model)
