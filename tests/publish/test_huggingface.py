"""Publishing through the real huggingface_hub client to a local stand-in of the Hub's endpoints."""

from __future__ import annotations

import pytest

from loraflow.errors import UserInputError
from loraflow.publish.huggingface import publish_files
from loraflow.testing.hub_standin import HubStandin


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # a loopback endpoint; nothing leaves the machine
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once at import, whichever test imported it
    with HubStandin() as h:
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_TOKEN", h.state.token)
        yield h


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
