"""CLIP checkpoints from local folders, the Hugging Face cache or the Hub: loading, offline probing, and what to do when none works."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import getproxies

# Seconds to wait for the Hub to answer a connection before calling it unreachable; the Hub
# client itself retries unreachable hosts for minutes.
_HUB_PROBE_SECONDS = 3.0
# What from_pretrained raises for checkpoints it cannot get or read: missing files, no network,
# offline mode and bad ids (OSError), a folder without a usable config (ValueError).
_LOAD_ERRORS = (OSError, ValueError)


class ModelUnavailableError(RuntimeError):
    """The model's weights cannot be loaded here; the message says what to do instead."""


def load_checkpoint(model: str, revision: str | None):
    """CLIPModel, image processor and tokenizer: from local files first, the Hub only if it answers."""
    from huggingface_hub import is_offline_mode
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPModel

    directory = Path(model).expanduser()
    source = str(directory) if directory.is_dir() else model

    def load(local_only: bool):
        options = {"revision": revision, "local_files_only": local_only}
        model_type = AutoConfig.from_pretrained(source, **options).model_type
        if model_type != "clip":
            raise ModelUnavailableError(
                f"model {model!r} is a {model_type!r} checkpoint, not CLIP; pass a CLIP id or checkpoint "
                f"directory, or use `--model baseline`"
            )
        return (
            CLIPModel.from_pretrained(source, **options),
            AutoImageProcessor.from_pretrained(source, **options),
            AutoTokenizer.from_pretrained(source, **options),
        )

    try:
        return load(local_only=True)
    except _LOAD_ERRORS as error:
        if directory.is_dir() or is_offline_mode() or not _hub_reachable():
            raise ModelUnavailableError(
                _unavailable_message(model, directory.is_dir(), error)
            ) from None
    try:
        return load(local_only=False)
    except _LOAD_ERRORS as error:
        raise ModelUnavailableError(_unavailable_message(model, False, error)) from None


def _hub_reachable() -> bool:
    from huggingface_hub import constants

    if getproxies().get("https"):
        return True  # behind a proxy only the Hub client itself can tell
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=_HUB_PROBE_SECONDS):
            return True
    except OSError:
        return False


def _unavailable_message(model: str, is_directory: bool, error: Exception) -> str:
    cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
    offline_hint = "`--model baseline` works offline with no weights at all."
    if is_directory:
        return (
            f"cannot load a CLIP checkpoint from the directory {model} ({cause}). It must hold what "
            f"save_pretrained writes for CLIPModel and its processor (config, weights, tokenizer and "
            f"preprocessor files). {offline_hint}"
        )
    return (
        f"cannot load the CLIP model {model!r}: its weights are not in the local Hugging Face cache and "
        f"the Hub cannot be used ({cause}). Pass a local directory holding the checkpoint (the output of "
        f"save_pretrained), set HF_HOME to a cache that already holds it, or allow network access "
        f"(unset HF_HUB_OFFLINE). {offline_hint}"
    )


def hub_commit(model: str, revision: str | None) -> str | None:
    """The commit a cached Hub model was loaded from: its snapshot folder is named after it."""
    from huggingface_hub import try_to_load_from_cache
    from transformers.utils.hub import extract_commit_hash

    cached = try_to_load_from_cache(model, "config.json", revision=revision)
    return extract_commit_hash(cached, None) if isinstance(cached, str) else None
