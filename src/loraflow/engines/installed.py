"""Which external engines are installed on this machine, installing them, and the preflight that stops a
job before anything is made when the engine it needs is missing (instead of a FileNotFoundError deep in
the train stage).

Where an engine is looked for (the operator's configuration, never the spec of a service user):
LORAFLOW_AITOOLKIT_DIR / LORAFLOW_KOHYA_DIR / LORAFLOW_MUSUBI_DIR, else LORAFLOW_HOME/engines/<name> (what
`loraflow engines install` writes: a clone at the pinned commit with its own venv, or a link to a checkout
given with --from).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow import paths
from loraflow.engines.external import engine_dir
from loraflow.errors import UserInputError

# A file every checkout of each engine has (musubi keeps its entry points under src/musubi_tuner).
ENTRY = {"ai-toolkit": "run.py", "kohya": "flux_train_network.py", "musubi": "src/musubi_tuner/wan_train_network.py"}
CPU_ENV_SCRIPT = Path(__file__).with_name("aitoolkit_cpu_env.sh")


class EngineNotInstalled(UserInputError):
    """The spec's engine is not on this machine; `code` is the job failure code the runner records."""

    code = "engine_missing"

    def __init__(self, name: str, root: Path) -> None:
        self.engine = name
        super().__init__(
            f"the {name} engine is not installed (looked for {ENTRY[name]} in {root})",
            fix=f"run `loraflow engines install {name}` (or set {env_var(name)} to a checkout of it)",
        )


@dataclass(frozen=True)
class EngineInstall:
    name: str
    root: Path
    found: bool
    python: str | None  # its own venv's interpreter, if it has one
    commit: str | None  # the checkout's commit, when it is a git checkout
    pin: str
    via: str  # how the folder was chosen: the environment variable or the install location


def env_var(name: str) -> str:
    return f"LORAFLOW_{name.upper().replace('-', '')}_DIR"


def pin_of(name: str) -> tuple[str, str]:
    """(repository, pinned commit) of an external engine."""
    if name == "ai-toolkit":
        from loraflow.engines import aitoolkit_files as module
    elif name == "kohya":
        from loraflow.engines import kohya_files as module  # type: ignore[no-redef]
    elif name == "musubi":
        from loraflow.engines import musubi_files as module  # type: ignore[no-redef]
    else:
        raise UserInputError(f"unknown external engine '{name}'", fix=f"use one of: {', '.join(ENTRY)}")
    return module.REPO, module.PIN


def _commit(root: Path) -> str | None:
    if not (root / ".git").exists():
        return None
    result = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False, timeout=30
    )
    return result.stdout.strip() or None if result.returncode == 0 else None


def describe(name: str) -> EngineInstall:
    """Where `name` is looked for and what is there."""
    _, pin = pin_of(name)
    root = engine_dir(name, {})
    venv = root / "venv" / "bin" / "python"
    found = (root / ENTRY[name]).is_file()
    return EngineInstall(
        name=name,
        root=root,
        found=found,
        python=str(venv) if venv.exists() else None,
        commit=_commit(root) if found else None,
        pin=pin,
        via=env_var(name) if os.environ.get(env_var(name)) else "install location",
    )


def require_engine(spec: Any) -> None:
    """Raise EngineNotInstalled when the spec trains on this machine with an external engine it lacks.

    Remote hosts install the engine themselves (the rendered setup script); the builtin one is loraflow.
    """
    name = spec.engine.name
    if name not in ENTRY or spec.compute.provider != "local":
        return
    root = engine_dir(name, spec.engine.options)
    if not (root / ENTRY[name]).is_file():
        raise EngineNotInstalled(name, root)


def _run(argv: list[str], say: Callable[[str], None], cwd: Path | None = None) -> None:
    """Run an install step with its output shown as it comes (pip and git progress included)."""
    say("$ " + " ".join(argv))
    result = subprocess.run(argv, cwd=cwd, check=False)
    if result.returncode != 0:
        raise UserInputError(
            f"`{' '.join(argv)}` failed with exit code {result.returncode}",
            fix="see its output above; re-running the install is safe",
        )


def _link(name: str, source: Path, say: Callable[[str], None]) -> Path:
    """Make LORAFLOW_HOME/engines/<name> point at a checkout the operator has (nothing is copied)."""
    dest = paths.home() / "engines" / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or not dest.exists():
        dest.unlink(missing_ok=True)
        dest.symlink_to(source, target_is_directory=True)
    elif dest.resolve() != source:
        raise UserInputError(
            f"{dest} already holds an install of {name}",
            where=str(dest),
            fix="remove it first, or use it as it is (`loraflow engines list`)",
        )
    say(f"{name}: {dest} -> {source}")
    return dest


def install(name: str, source: Path | None, say: Callable[[str], None]) -> Path:
    """Install `name` at its pinned commit with its own venv and return where it is.

    Without `source`: clone and set up under LORAFLOW_HOME/engines/<name> (the script the engine's jobs
    render for rented hosts). With `source`, a local checkout: build its venv in place (ai-toolkit: the
    CPU environment of aitoolkit_cpu_env.sh) and link it as the install.
    """
    repo, pin = pin_of(name)
    if source is None:
        from loraflow.catalog import base_models
        from loraflow.engines import get_engine
        from loraflow.layout import JobLayout
        from loraflow.spec import parse_spec

        model = next(m.id for m in base_models().values() if name in m.engines)  # any model the engine trains
        spec = parse_spec({"name": "install", "dataset": {"path": "."}, "base_model": model, "engine": name})
        files = get_engine(name).render(spec, JobLayout("/JOB"), "install", spec.base_model)
        script = next(text for file, text in files.items() if file.startswith("setup_"))
        dest = paths.home() / "engines" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
            f.write(script)
        try:
            say(f"installing {repo}@{pin} into {dest} (a clone and its own venv; several GB)")
            _run(["bash", f.name, str(dest)], say)
        finally:
            Path(f.name).unlink(missing_ok=True)
        return dest
    source = source.expanduser().resolve()
    if not (source / ENTRY[name]).is_file():
        raise UserInputError(
            f"{source} is not a checkout of {repo} (no {ENTRY[name]})", where="--from", fix=f"git clone {repo}"
        )
    commit = _commit(source)
    if commit and not commit.startswith(pin):
        say(f"note: {source} is at {commit[:8]}, loraflow is checked against {pin}")
    if name == "ai-toolkit":
        _run(["bash", str(CPU_ENV_SCRIPT), str(source)], say)
    elif not (source / "venv" / "bin" / "python").exists():
        _run([sys.executable, "-m", "venv", str(source / "venv")], say)
        what = ["-e", "."] if name == "musubi" else ["-r", "requirements.txt"]  # musubi is a package (pyproject)
        _run([str(source / "venv" / "bin" / "pip"), "install", *what], say, cwd=source)
    return _link(name, source, say)
