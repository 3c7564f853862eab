"""Publish a MEMatte checkpoint folder on the Hugging Face Hub, with its model card.

`push_to_hub` writes README.md (the model card) into the folder when there is none, creates the Hub repo if
needed and uploads the folder with `HfApi.upload_folder`. The folder is never changed except for README.md,
so a push that fails (offline, no network, bad token) can simply be run again later.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, constants, get_token
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

from .errors import HubError, InputError
from .model_card.generator import (
    build_eval_results,
    check_repo_id,
    is_generated_card,
    write_model_card,
)

try:  # huggingface_hub 2.x talks HTTP through httpx2, 1.x through httpx: their errors are what we catch.
    import httpx2 as _http
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    import httpx as _http

WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
DEFAULT_COMMIT_MESSAGE = "Upload MEMatte checkpoint with mematte-hf"
# Metadata of an existing generated card that a regeneration keeps unless the caller gives new values.
_KEPT_METADATA = ("base_model", "datasets", "license")


def check_checkpoint_folder(folder: str | os.PathLike) -> Path:
    """The folder as a Path, after checking it holds config.json and safetensors weights."""
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{path} is not a folder; pass the checkpoint folder written by `save_pretrained`")
    if not (path / "config.json").is_file():
        raise InputError(f"{path} has no config.json; pass a checkpoint folder written by `save_pretrained`")
    if not any((path / name).is_file() for name in WEIGHTS_FILES):
        raise InputError(f"{path} has no model.safetensors; save the model with `save_pretrained` first")
    return path


def push_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    card_kwargs: Mapping[str, Any] | None = None,
) -> str:
    """Upload the checkpoint folder to the model repo `repo_id` (created if missing) and return its URL.

    `card_kwargs` are keyword arguments of `mematte_hf.model_card.build_model_card` (metrics, metrics_dataset,
    memory, base_model, ...). The card is written when the folder has no README.md, and refreshed when
    metrics are given. Raises `HubError` (one line, saying what to do) when the Hub cannot be reached or
    refuses the request, and `InputError` for a folder or repo id that cannot be pushed.
    """
    path = check_checkpoint_folder(folder)
    check_repo_id(repo_id)
    prepare_model_card(path, repo_id, card_kwargs)
    with _hub_errors(path, repo_id, token):
        # Read at call time (not import time) so that tests and callers can switch offline mode.
        if constants.HF_HUB_OFFLINE:
            raise OfflineModeIsEnabled("HF_HUB_OFFLINE=1")
        api = HfApi(token=token)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_url.repo_id, folder_path=path, commit_message=commit_message, repo_type="model")
    return str(repo_url)


def prepare_model_card(folder: Path, repo_id: str, card_kwargs: Mapping[str, Any] | None = None) -> Path | None:
    """Write or refresh `folder/README.md`; return its path, or None when the existing card is kept.

    A card written by a person is never replaced: when metrics are given only its metadata (model-index) is
    updated. A card this package generated is regenerated, keeping its base_model, datasets and license
    (memory figures are not in the metadata: pass them again in `card_kwargs`).
    """
    kwargs = {key: value for key, value in (card_kwargs or {}).items() if key != "repo_id"}
    readme = folder / "README.md"
    if not readme.exists():
        return write_model_card(folder, repo_id=repo_id, **kwargs)
    if kwargs.get("metrics") is None:
        return None
    existing = _load_card(readme)
    if not is_generated_card(readme):
        return _update_card_metrics(existing, readme, repo_id, kwargs)
    for key in _KEPT_METADATA:
        if kwargs.get(key) is None and existing.data.get(key) is not None:
            kwargs[key] = existing.data.get(key)
    return write_model_card(folder, repo_id=repo_id, **kwargs)


def _load_card(readme: Path) -> ModelCard:
    try:
        return ModelCard.load(readme)
    except ValueError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"{readme} has unreadable front matter ({reason}); fix or delete it") from None


def _update_card_metrics(card: ModelCard, readme: Path, repo_id: str, kwargs: Mapping[str, Any]) -> Path:
    card.data.eval_results = build_eval_results(
        kwargs["metrics"], dataset=kwargs.get("metrics_dataset"), split=kwargs.get("metrics_split")
    )
    # A model-index needs a model name; keep the card's own when it has one.
    card.data.model_name = card.data.get("model_name") or repo_id.split("/")[-1]
    card.save(readme)
    return readme


@contextmanager
def _hub_errors(folder: Path, repo_id: str, token: str | None) -> Iterator[None]:
    """Turn huggingface_hub / HTTP failures into a one-line `HubError` that says what to do next."""
    try:
        yield
    except OfflineModeIsEnabled:
        raise _unreachable("offline mode is on: HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE", folder, repo_id) from None
    except _http.TimeoutException:
        raise _unreachable("the connection timed out", folder, repo_id) from None
    except (_http.TransportError, ConnectionError) as error:
        raise _unreachable(_short_reason(error), folder, repo_id) from None
    except LocalTokenNotFoundError:
        raise _auth_error(None, repo_id, token) from None
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        if status in (401, 403):
            raise _auth_error(status, repo_id, token) from None
        raise HubError(
            f"the Hugging Face Hub refused the upload (HTTP {status}: {_short_reason(error)}); "
            f"the folder is kept at {folder.resolve()} — fix the cause and run "
            f"`{_push_command(folder, repo_id)}`"
        ) from None
    except RuntimeError as error:  # hf_xet reports failed transfers as RuntimeError
        raise _kept(f"the upload to the Hugging Face Hub failed ({_short_reason(error)})", folder, repo_id) from None


def _unreachable(reason: str, folder: Path, repo_id: str) -> HubError:
    return _kept(f"could not reach the Hugging Face Hub ({reason})", folder, repo_id)


def _kept(what_happened: str, folder: Path, repo_id: str) -> HubError:
    return HubError(
        f"{what_happened}; the folder is kept at {folder.resolve()} — "
        f"push it later with `{_push_command(folder, repo_id)}`"
    )


def _auth_error(status: int | None, repo_id: str, token: str | None) -> HubError:
    if status == 403:
        return HubError(
            f"the Hugging Face Hub refused to let this token write to {repo_id} (HTTP 403); "
            "run `hf auth login` with a token that has write access, or pass one with --token"
        )
    if not token and get_token() is None:
        return HubError("you are not logged in to the Hugging Face Hub; run `hf auth login` or pass --token")
    code = f" (HTTP {status})" if status else ""
    return HubError(f"the Hugging Face Hub rejected the token{code}; run `hf auth login` again or pass a valid --token")


def _short_reason(error: BaseException) -> str:
    """The first line of an error message, without an "[Errno N]" prefix, at most 100 characters."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", text)
    return text if len(text) <= 100 else text[:97] + "..."


def _push_command(folder: Path, repo_id: str) -> str:
    return f"mematte push {shlex.quote(str(folder.resolve()))} --repo-id {shlex.quote(repo_id)}"
