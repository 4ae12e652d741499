"""The Hugging Face Hub: ``--push-to-hub USER/REPO`` uploads an exported directory; a model id
(``Qwen/Qwen2.5-0.5B``) given where a checkpoint is taken downloads into huggingface_hub's cache.

With no network this fails in about a second with one line, as ``mygpt data download`` does: the
Hub's host name is resolved first, because huggingface_hub retries a dead connection for ~25 s.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mygpt.data.download import _check_hub_resolves, _network_error, _offline_env
from mygpt.errors import MygptError, UsageError

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def check_repo_id(repo: str) -> None:
    if not _REPO_ID.fullmatch(repo) or ".." in repo or repo.endswith(".git"):
        raise UsageError(f"--push-to-hub {repo!r} is not a repository id — write it as USER/REPO")


def push(outdir: Path, repo: str, private: bool = False) -> str:
    """Create ``repo`` (a model repository) if needed and upload ``outdir``; returns its URL."""
    check_repo_id(repo)
    if _offline_env():
        raise MygptError(
            f"can't push to {repo}: offline mode is on (HF_HUB_OFFLINE=1) — unset it, or upload "
            f"{outdir} later with `hf upload {repo} {outdir}`"
        )
    from huggingface_hub import HfApi
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        _check_hub_resolves()
        api = HfApi()
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo, folder_path=str(outdir), repo_type="model",
            commit_message="Upload a model exported by mygpt",
        )  # fmt: skip
    except Exception as e:
        raise _push_error(e, repo, outdir) from None
    return str(getattr(info, "repo_url", None) or f"https://huggingface.co/{repo}")


def _push_error(e: BaseException, repo: str, outdir: Path) -> MygptError:
    later = f"the export in {outdir} is complete; upload it later with `hf upload {repo} {outdir}`"
    if _network_error(e):
        return MygptError(
            f"can't reach the Hugging Face Hub to push {repo} (no network?) — {later}"
        )
    name = type(e).__name__
    first = str(e).strip().splitlines()[0] if str(e).strip() else name
    if name in {"HfHubHTTPError", "HTTPError"} or "401" in first or "403" in first:
        return MygptError(
            f"the Hub refused the push to {repo} ({first}) — log in with `hf auth login` "
            f"(a token with write access); {later}"
        )
    return MygptError(f"pushing to {repo} failed ({name}: {first}) — {later}")


#: what a model needs from its repository (never pickled *.bin weights, never remote code)
MODEL_FILES = [
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "chat_template.jinja", "model.safetensors", "model.safetensors.index.json",
    "model-*.safetensors",
]  # fmt: skip


def is_repo_id(source: str) -> bool:
    """Whether ``source`` reads as a Hub model id (``owner/name``) rather than a local path."""
    return (
        bool(_REPO_ID.fullmatch(source))
        and ".." not in source
        and not source.endswith((".safetensors", ".ckpt", ".pt", ".pth", ".json"))
    )


def download_model(repo: str) -> Path:
    """The local snapshot of Hub model ``repo`` (downloaded into huggingface_hub's cache once).

    Offline (``HF_HUB_OFFLINE=1``) it uses the cache alone; anything missing is one line saying
    how to get the files.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    offline = _offline_env()
    try:
        if not offline:
            _check_hub_resolves()
        path = snapshot_download(repo, allow_patterns=MODEL_FILES, local_files_only=offline)
    except Exception as e:
        raise _download_error(e, repo, offline) from None
    return Path(path)


def _download_error(e: BaseException, repo: str, offline: bool) -> MygptError:
    get = f"run `hf download {repo}` while online, or pass a local model directory"
    if offline:
        return MygptError(
            f"{repo!r} is not a local path and the Hugging Face cache lacks its files, and "
            f"offline mode is on (HF_HUB_OFFLINE=1) — {get}"
        )
    name = type(e).__name__
    if _network_error(e):
        return MygptError(
            f"can't reach the Hugging Face Hub to download {repo} (no network?) — {get}"
        )
    first = str(e).strip().splitlines()[0] if str(e).strip() else name
    if name in {"RepositoryNotFoundError", "GatedRepoError"} or "401" in first or "404" in first:
        return MygptError(
            f"{repo!r} is neither a local file or directory nor a model on the Hub you can read "
            f"({name}) — check the path or id; for a gated model, `hf auth login` first"
        )
    return MygptError(f"downloading {repo} failed ({name}: {first}) — {get}")


def resolve_source(source: str | os.PathLike) -> Path:
    """A local file or directory for ``source`` (a Hub id is downloaded into the cache first)."""
    path = Path(source)
    if path.exists():
        return path
    if is_repo_id(str(source)):
        return download_model(str(source))
    return path  # load_checkpoint words the "does not exist" error
