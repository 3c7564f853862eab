"""`mematte push` / `push_to_hub`: clean one-line failures without a Hub, and a folder left as it was."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import ModelCard, RepoUrl, constants
from huggingface_hub.errors import HfHubHTTPError

from mematte_hf import hub
from mematte_hf.errors import HubError, InputError
from mematte_hf.hub import check_checkpoint_folder, push_to_hub

# Runs the real `mematte` dispatcher in a fresh process, so that the Hub settings come from its environment.
PUSH_SCRIPT = """
import sys
import mematte_hf.cli as cli
sys.exit(cli.main(sys.argv[1:]))
"""


def make_checkpoint(folder: Path) -> Path:
    """A minimal checkpoint folder: config.json plus a one-tensor model.safetensors."""
    import safetensors.torch
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "mematte", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6}
    (folder / "config.json").write_text(json.dumps(config))
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under the folder except the model card, by relative path."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != "README.md"
    }


def run_push(folder: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """`mematte push FOLDER --repo-id user/x` in a fresh interpreter (huggingface_hub reads env at import)."""
    environment = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf_home"),  # no stored token, no shared cache
        "HF_TOKEN": "",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", PUSH_SCRIPT, "push", str(folder), "--repo-id", "user/x"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mematte push: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def closed_port() -> int:
    """A local port nothing listens on: bound once to get a free number, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "checkpoint")


def test_push_offline_fails_cleanly_and_keeps_the_folder(checkpoint: Path, tmp_path: Path) -> None:
    before = snapshot(checkpoint)
    result = run_push(checkpoint, tmp_path, HF_HUB_OFFLINE="1")
    assert_one_line_error(
        result,
        "could not reach the Hugging Face Hub (offline mode is on",
        f"the folder is kept at {checkpoint.resolve()}",
        f"mematte push {checkpoint.resolve()} --repo-id user/x",
    )
    assert snapshot(checkpoint) == before
    assert (checkpoint / "README.md").is_file()  # the card is written, ready for the later push


def test_push_with_connection_refused_fails_cleanly(checkpoint: Path, tmp_path: Path) -> None:
    before = snapshot(checkpoint)
    result = run_push(
        checkpoint,
        tmp_path,
        HF_HUB_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0",  # huggingface_hub also reads this one as offline mode
        HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
    )
    assert_one_line_error(result, "could not reach the Hugging Face Hub (", "mematte push ")
    assert snapshot(checkpoint) == before


def test_push_without_weights_is_an_input_error(tmp_path: Path) -> None:
    folder = tmp_path / "incomplete"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    result = run_push(folder, tmp_path, HF_HUB_OFFLINE="1")
    assert_one_line_error(result, "has no model.safetensors")
    assert sorted(path.name for path in folder.iterdir()) == ["config.json"]


def test_checkpoint_folder_checks(tmp_path: Path, checkpoint: Path) -> None:
    assert check_checkpoint_folder(checkpoint) == checkpoint
    with pytest.raises(InputError, match="is not a folder"):
        check_checkpoint_folder(tmp_path / "absent")
    (tmp_path / "no_config").mkdir()
    with pytest.raises(InputError, match="has no config.json"):
        check_checkpoint_folder(tmp_path / "no_config")


class _RejectingHub(http.server.BaseHTTPRequestHandler):
    """A stand-in Hub that answers every request like the real one answers a bad token."""

    def _reject(self) -> None:
        body = json.dumps({"error": "Invalid credentials in Authorization header"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Message", "Invalid credentials in Authorization header")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _reject

    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass


@pytest.fixture
def rejecting_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RejectingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield constants.ENDPOINT
    server.shutdown()
    server.server_close()


def test_rejected_token_says_how_to_log_in(checkpoint: Path, rejecting_hub: str) -> None:
    with pytest.raises(HubError, match="rejected the token .*`hf auth login`") as caught:
        push_to_hub(checkpoint, "user/x", token="hf_not_a_real_token")
    assert "\n" not in str(caught.value)


def test_missing_token_says_how_to_log_in(
    checkpoint: Path, rejecting_hub: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(HubError, match="not logged in .*`hf auth login` or pass --token"):
        push_to_hub(checkpoint, "user/x")


class _FakeApi:
    """Records the calls `push_to_hub` makes instead of talking to the Hub."""

    calls: list[tuple[str, dict]] = []
    failure: Exception | None = None

    def __init__(self, token: str | None = None) -> None:
        self.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id: str, **kwargs: object) -> RepoUrl:
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return RepoUrl(f"https://huggingface.co/{repo_id}", endpoint="https://huggingface.co")

    def upload_folder(self, **kwargs: object) -> None:
        self.calls.append(("upload_folder", kwargs))
        if self.failure is not None:
            raise self.failure


@pytest.fixture
def fake_api(monkeypatch: pytest.MonkeyPatch) -> type[_FakeApi]:
    monkeypatch.setattr(_FakeApi, "calls", [])
    monkeypatch.setattr(_FakeApi, "failure", None)
    monkeypatch.setattr(hub, "HfApi", _FakeApi)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return _FakeApi


def test_push_creates_the_repo_and_uploads_the_folder(checkpoint: Path, fake_api: type[_FakeApi]) -> None:
    before = snapshot(checkpoint)
    url = push_to_hub(checkpoint, "user/x", token="hf_token", private=True)
    assert url == "https://huggingface.co/user/x"
    names = [name for name, _ in fake_api.calls]
    assert names == ["init", "create_repo", "upload_folder"]
    assert fake_api.calls[0][1] == {"token": "hf_token"}
    assert fake_api.calls[1][1] == {"repo_id": "user/x", "private": True, "exist_ok": True, "repo_type": "model"}
    upload = fake_api.calls[2][1]
    assert Path(upload["folder_path"]) == checkpoint and upload["repo_id"] == "user/x"
    assert snapshot(checkpoint) == before
    assert ModelCard.load(checkpoint / "README.md").data.library_name == "transformers"


_REQUEST = httpx2.Request("POST", "https://huggingface.co/api/x")


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        (
            HfHubHTTPError("500 Server Error: boom\nmore detail", response=httpx2.Response(500, request=_REQUEST)),
            r"refused the upload \(HTTP 500: 500 Server Error: boom\)",
        ),
        (httpx2.ConnectTimeout("timed out", request=_REQUEST), r"could not reach .*\(the connection timed out\)"),
        (RuntimeError("xet transfer failed"), r"the upload to the Hugging Face Hub failed \(xet transfer failed\)"),
    ],
)
def test_upload_failures_are_one_line_hub_errors(
    checkpoint: Path, fake_api: type[_FakeApi], failure: Exception, message: str
) -> None:
    fake_api.failure = failure
    with pytest.raises(HubError, match=message) as caught:
        push_to_hub(checkpoint, "user/x")
    assert "\n" not in str(caught.value)
    assert f"mematte push {checkpoint.resolve()} --repo-id user/x" in str(caught.value)


def test_handwritten_card_is_kept_and_only_its_metadata_gets_metrics(
    checkpoint: Path, tmp_path: Path, fake_api: type[_FakeApi]
) -> None:
    readme = checkpoint / "README.md"
    readme.write_text("---\nlicense: apache-2.0\n---\n\n# My own card\n\nWritten by hand.\n", encoding="utf-8")
    push_to_hub(checkpoint, "user/x")
    assert "Written by hand." in readme.read_text(encoding="utf-8")
    assert ModelCard.load(readme).data.eval_results is None

    metrics = tmp_path / "metrics.json"
    mean = {"sad": 30.25, "mse": 5.5, "grad": 10.75, "conn": 25.125}
    metrics.write_text(json.dumps({"per_image": {}, "mean": mean, "num_images": 3}))
    push_to_hub(checkpoint, "user/x", card_kwargs={"metrics": metrics, "metrics_dataset": "AIM-500"})
    card = ModelCard.load(readme)
    assert "Written by hand." in card.text
    assert card.data.license == "apache-2.0"
    assert {result.metric_type: result.metric_value for result in card.data.eval_results} == mean


def test_generated_card_is_regenerated_with_metrics_keeping_metadata(
    checkpoint: Path, tmp_path: Path, fake_api: type[_FakeApi]
) -> None:
    push_to_hub(checkpoint, "user/x", card_kwargs={"base_model": "hustvl/vitmatte-small-composition-1k"})
    readme = checkpoint / "README.md"
    assert "Not measured for this checkpoint." in readme.read_text(encoding="utf-8")

    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"per_image": {}, "mean": {"sad": 30.25}, "num_images": 3}))
    push_to_hub(checkpoint, "user/x", card_kwargs={"metrics": metrics, "metrics_dataset": "AIM-500"})
    card = ModelCard.load(readme)
    assert card.data.base_model == "hustvl/vitmatte-small-composition-1k"
    assert [(result.metric_type, result.metric_value) for result in card.data.eval_results] == [("sad", 30.25)]
    assert "| 30.25 |" in card.text
