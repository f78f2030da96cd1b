"""Publishing through the real huggingface_hub client to a local stand-in of the Hub's endpoints."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from loraflow.errors import UserInputError
from loraflow.publish.huggingface import publish_files
from loraflow.testing.hub_standin import HubStandin, upload_mode


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # a loopback endpoint; nothing leaves the machine
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once at import, whichever test imported it
    no_xet(monkeypatch)
    with HubStandin() as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_TOKEN", h.state.token)
        yield h


def no_xet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stand-in serves the LFS batch API, not Xet storage: huggingface_hub is told to use LFS (it uses
    Xet whenever hf_xet is installed), here and in the runner processes a test starts."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


def test_one_commit_with_every_file(hub) -> None:
    files = {
        "m.safetensors": b"\x00" * 2048,
        "README.md": b"---\nlicense: apache-2.0\n---\n# m\n",
        "samples/step-000030/00.png": b"png",
        "metadata.json": b"{}",
    }
    result = publish_files(files, "alice/m", private=True, message="loraflow: m")
    repo = hub.state.repos["alice/m"]
    assert repo.private and repo.files == files
    assert len(repo.commits) == 1 and repo.commits[0]["summary"] == "loraflow: m"
    assert result["url"].endswith("/alice/m") and result["commit"] == repo.commits[0]["oid"]
    # The LoRA went the way a real one goes: preupload said LFS, the bytes went to LFS storage, and the
    # commit carries a pointer to them (the README and metadata.json went inline).
    assert any(r.endswith(".git/info/lfs/objects/batch") for r in hub.state.requests)
    assert hashlib.sha256(files["m.safetensors"]).hexdigest() in hub.state.lfs
    assert upload_mode("README.md", files["README.md"], 30) == "regular"
    again = publish_files({"README.md": b"v2"}, "alice/m", private=True, message="update")  # repo reused
    assert again["repo_id"] == "alice/m" and len(repo.commits) == 2


def test_transient_errors_are_retried(hub) -> None:
    hub.state.fail_next = [503, 502]
    publish_files({"a.txt": b"a"}, "alice/r", private=False, message="m", retry_base_s=0.01)
    assert hub.state.repos["alice/r"].files == {"a.txt": b"a"}
    assert sum(1 for r in hub.state.requests if "/commit/" in r) == 3


def test_bad_or_missing_token_is_a_clear_error(hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(UserInputError, match="write access"):
        publish_files({"a": b"a"}, "alice/x", private=True, message="m", retry_base_s=0.01)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(UserInputError, match="set HF_TOKEN"):
        publish_files({"a": b"a"}, "alice/x", private=True, message="m")


def test_a_dropped_connection_is_retried(hub) -> None:
    """huggingface_hub >= 1.0 raises httpx's errors (not OSError) when a connection drops: one dropped
    commit must not fail the publish."""
    hub.state.drop_next = 1
    result = publish_files({"a.txt": b"a"}, "alice/d", private=False, message="m", retry_base_s=0.01)
    assert hub.state.repos["alice/d"].files == {"a.txt": b"a"} and result["commit"]
    assert sum(1 for r in hub.state.requests if "/commit/" in r) == 2


def test_a_link_that_stays_down_is_a_clear_message(hub) -> None:
    hub.state.drop_next = 10
    with pytest.raises(UserInputError, match="could not reach Hugging Face"):
        publish_files({"a.txt": b"a"}, "alice/down", private=False, message="m", retry_base_s=0.01)


def test_contract_huggingface_hubs_lfs_upload_path_against_the_stand_in(hub, tmp_path: Path) -> None:
    """huggingface_hub is the judge: upload_folder with a LoRA-sized binary takes preupload -> LFS batch ->
    multipart upload (parts, ETags, completion) -> verify -> commit with an lfsFile pointer, and the
    stand-in ends up holding exactly the bytes."""
    from huggingface_hub import HfApi

    hub.state.multipart_chunk = 64 * 1024
    folder = tmp_path / "lora"
    (folder / "samples").mkdir(parents=True)
    weights = bytes(range(256)) * 1000  # 256 kB of binary: four parts
    (folder / "lora.safetensors").write_bytes(weights)
    (folder / "samples" / "00.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    (folder / "README.md").write_text("# lora\n")
    api = HfApi(endpoint=hub.url, token=hub.state.token)
    api.create_repo("alice/lfs", private=True)
    info = api.upload_folder(folder_path=folder, repo_id="alice/lfs", commit_message="up")
    repo = hub.state.repos["alice/lfs"]
    assert repo.files["lora.safetensors"] == weights and repo.files["README.md"] == b"# lora\n"
    assert repo.files["samples/00.png"].startswith(b"\x89PNG") and info.oid == repo.commits[0]["oid"]
    oid = hashlib.sha256(weights).hexdigest()
    assert sum(1 for r in hub.state.requests if r.startswith(f"PUT /_lfs/{oid}/")) == 4  # the parts
    assert any(r.endswith("/info/lfs/objects/verify") for r in hub.state.requests)
    again = api.upload_folder(folder_path=folder, repo_id="alice/lfs", commit_message="same bytes")
    assert again.oid and sum(1 for r in hub.state.requests if r.startswith(f"PUT /_lfs/{oid}/")) == 4  # stored
