"""A spec file read from disk: strict YAML (no repeated keys), paths checked here and made relative to the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from loraflow import catalog
from loraflow.errors import SpecError, UserInputError
from loraflow.spec.models import TrainSpec, looks_like_path
from loraflow.spec.parsing import parse_spec
from loraflow.spec.resolving import engine_name

MAX_SPEC_BYTES = 1 << 20  # a spec file on one's own machine; the service's cap is lower (ServiceConfig)
MAX_SPEC_NODES = 100_000  # YAML nodes after aliases are expanded
MAX_SPEC_DEPTH = 64  # nesting; a real spec is 5 deep


class SpecTooBig(yaml.YAMLError):
    """The spec text is over a bound (bytes, nodes with aliases expanded, or depth): refused before any
    work that grows with it, so a 450-byte alias bomb costs what 450 bytes cost."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; a spec with `steps:` twice is a mistake to
    name, not a guess to make. Every repeat is recorded so all of them are reported at once.

    It also counts nodes as they are composed, an alias counting as the whole node it stands for, and
    stops at `max_nodes` or `max_depth`: PyYAML shares an aliased node, but everything that walks the
    result (validation, the trust policy, JSON) visits each copy."""

    def __init__(self, stream: str, max_nodes: int = MAX_SPEC_NODES, max_depth: int = MAX_SPEC_DEPTH) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []
        self.max_nodes, self.max_depth = max_nodes, max_depth
        self._weight: dict[int, int] = {}
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        if self._depth > self.max_depth:
            raise SpecTooBig(f"the spec is nested more than {self.max_depth} levels deep")
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if id(node) not in self._weight:
            children: list[yaml.Node] = []
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            self._weight[id(node)] = 1 + sum(self._weight.get(id(c), 1) for c in children)
        if self._weight[id(node)] > self.max_nodes:
            raise SpecTooBig(
                f"the spec has more than {self.max_nodes} values once its aliases (*name) are expanded"
            )
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first:
                self.duplicates.append(
                    f"line {line}: key '{key_node.value}' is given twice (first on line {first[key_node.value]});"
                    " only one would count. Fix: keep one of them."
                )
            first.setdefault(key_node.value, line)
        return super().construct_mapping(node, deep=deep)


def check_bounds(value: Any, max_nodes: int = MAX_SPEC_NODES, max_depth: int = MAX_SPEC_DEPTH) -> None:
    """The same bounds for a spec that arrived already parsed (a JSON body): SpecTooBig past them, found
    without recursion, so a 900-deep mapping is refused instead of overflowing the stack later."""
    stack, seen = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if depth > max_depth:
            raise SpecTooBig(f"the spec is nested more than {max_depth} levels deep")
        if seen > max_nodes:
            raise SpecTooBig(f"the spec has more than {max_nodes} values")
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item if isinstance(item, list) else []
        stack.extend((child, depth + 1) for child in children)


def read_yaml(
    text: str, max_bytes: int = MAX_SPEC_BYTES, max_nodes: int = MAX_SPEC_NODES
) -> tuple[Any, list[str]]:
    """The YAML document and one problem line per duplicated key (raises yaml.YAMLError when not YAML,
    SpecTooBig when over `max_bytes` of text or `max_nodes` values with aliases expanded)."""
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise SpecTooBig(f"the spec is over {max_bytes} bytes")
    loader = _UniqueKeyLoader(text, max_nodes)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


# The file each kind of diffusers pipeline part keeps its settings in (tokenizers have several kinds).
_PART_CONFIG = {"scheduler": ("scheduler_config.json",), "tokenizer": ("tokenizer_config.json", "tokenizer.json")}


def model_folder_problems(folder: Path, shown: str) -> list[str]:
    """A diffusers folder with a part missing or half-copied, named before anything starts: loading it fails
    the same way on every restart, minutes into the job (diffusers: "no file named config.json")."""
    index = folder / "model_index.json"
    if not index.is_file():
        return []  # a single-file or engine-specific layout: the engine judges it
    try:
        parts = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"base_model: {shown}/model_index.json is not valid JSON. Fix: re-save the model with save_pretrained."]
    problems = []
    for name, value in parts.items():
        if name.startswith("_") or not isinstance(value, list) or not value or value[0] is None:
            continue
        kind = "tokenizer" if name.startswith("tokenizer") else name if name == "scheduler" else None
        wanted = _PART_CONFIG.get(kind or "", ("config.json",))
        if not any((folder / name / file).is_file() for file in wanted):
            problems.append(
                f"base_model: {shown}/{name} has no {' or '.join(wanted)} (the folder is incomplete). Fix: copy or "
                "download the model again, or re-save it with save_pretrained."
            )
    return problems


def _local_problems(raw: dict[str, Any], folder: Path, check_dataset: bool) -> list[str]:
    """Paths in a spec file that must exist on this machine: a base-model folder, and (for validate) the dataset."""
    problems: list[str] = []
    base = raw.get("base_model")
    local_model = isinstance(base, str) and base not in catalog.base_models() and looks_like_path(base)
    if local_model and not (folder / Path(str(base)).expanduser()).is_dir():
        problems.append(
            f"base_model: '{base}' is neither a catalog id ({', '.join(catalog.base_models())})"
            " nor an existing model folder."
        )
    elif local_model:
        problems += model_folder_problems(folder / Path(str(base)).expanduser(), str(base))
    data = raw.get("dataset")
    path = data.get("path") if isinstance(data, dict) else None
    if check_dataset and isinstance(path, str) and path.strip():
        target = (folder / Path(path).expanduser()).resolve()
        if not target.exists():
            problems.append(
                f"dataset.path: '{path}' does not exist (looked for {target}). Fix: give the folder, .zip or .tar"
                " of your images, relative to the spec file or absolute."
            )
    return problems


def load_spec(path: str | Path, check_dataset: bool = False, engine: str | None = None) -> TrainSpec:
    """A spec file, every problem named at once; check_dataset also requires dataset.path to exist here.

    `engine` replaces the spec's engine before the catalog is applied, exactly as writing `engine: X` there
    would (another engine's options and version are dropped: they are that engine's)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"no spec file at {path}", fix="run `loraflow spec init` to write a starter spec")
    try:
        raw, problems = read_yaml(path.read_text(encoding="utf-8-sig"))
    except SpecTooBig as exc:
        raise SpecError(str(path), [f"{exc}. Fix: write a smaller spec (no YAML aliases needed)."]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(where, [f"not valid YAML: {getattr(exc, 'problem', exc)}."]) from None
    except UnicodeDecodeError:
        raise SpecError(str(path), ["the file is not UTF-8 text."]) from None
    if engine and isinstance(raw, dict) and engine != engine_name(raw, ""):
        raw = {**raw, "engine": engine}
    if isinstance(raw, dict):
        problems += _local_problems(raw, path.parent, check_dataset)
    try:
        spec = parse_spec(raw, str(path))
    except SpecError as exc:
        raise SpecError(str(path), [*problems, *exc.problems]) from None
    if problems:
        raise SpecError(str(path), problems)
    # A relative dataset path is relative to the spec file, not to wherever the command runs.
    data_path = Path(spec.dataset.path).expanduser()
    if not data_path.is_absolute():
        spec.dataset.path = str((path.parent / data_path).resolve())
    if spec.base_model not in catalog.base_models():
        spec.base_model = str((path.parent / Path(spec.base_model).expanduser()).resolve())
    return spec
