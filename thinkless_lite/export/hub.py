"""The Hugging Face hub side of an export: repository ids, the token, and pushing a finished folder.

Every push failure keeps the folder and says how to push it later, so a flaky network never costs a merge.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from thinkless_lite.export.folder import CARD, MARKER, ExportError, ExportRunError, say
from thinkless_lite.base import MINI_BASE_NAME

_TRUE = {"1", "true", "yes", "on"}


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``HF_DATASETS_OFFLINE``) asks for no hub access.

    Read from the environment at each call (``huggingface_hub.constants`` reads it once, at import)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def is_hub_id(name: str | None) -> bool:
    """``owner/name`` that is not a local path, a ``.gguf`` file or the packaged mini base."""
    if not name or name == MINI_BASE_NAME or name.lower().endswith(".gguf"):
        return False
    if name.startswith(("/", ".", "~")) or Path(name).exists():
        return False
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name) is not None


def check_repo_id(repo_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", repo_id or "") or "--" in repo_id or ".." in repo_id:
        raise ExportError(f"--push-to-hub {repo_id!r} is not a hub repository id; write it as your-name/model-name")
    return repo_id


def require_token(token: str | None, repo_id: str) -> str:
    """``token``, else ``huggingface_hub``'s (``HF_TOKEN``, ``hf auth login``, Colab's secret); none is an error."""
    token = token or get_token()
    if not token:
        raise ExportError(f"--push-to-hub {repo_id} needs a Hugging Face write token: set HF_TOKEN in the environment (in "
                          "Colab: the key icon, a secret named HF_TOKEN); nothing was written")
    return token


def _push_later(folder: Path, repo_id: str, private: bool) -> str:
    flag = " --private" if private else ""
    return (f"The exported folder {folder} is intact; push it later with `thinkless-lite export --out {folder} "
            f"--push-to-hub {repo_id}{flag}` or `hf upload {repo_id} {folder}{flag}`.")


def _why_push_failed(err: BaseException) -> str:
    if isinstance(err, OfflineModeIsEnabled):
        return "the hub is switched off here (HF_HUB_OFFLINE=1)"
    if isinstance(err, HfHubHTTPError):
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            return f"the hub refused the token (HTTP {status}): it needs write access to this repository"
        return f"the hub answered with an error: {str(err).splitlines()[0]}"
    try:
        import httpx

        if isinstance(err, httpx.TransportError):
            return f"could not reach the hub ({type(err).__name__}: {err})"
    except ImportError:
        pass
    if isinstance(err, (ConnectionError, OSError, TimeoutError)):
        return f"could not reach the hub ({type(err).__name__}: {err})"
    return f"{type(err).__name__}: {err}"


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create ``repo_id`` (if needed, ``private`` as asked) and upload ``folder`` with ``huggingface_hub``.

    The token comes from ``token``, else :func:`require_token`'s sources. Offline (``HF_HUB_OFFLINE=1``), an
    unreachable ``HF_ENDPOINT`` or a refused token raise :class:`ExportRunError`, leaving the folder as it was.
    """
    folder = Path(folder)
    check_repo_id(repo_id)
    token = require_token(token, repo_id)
    if is_offline():
        raise ExportRunError(f"push to {repo_id} skipped: offline (HF_HUB_OFFLINE=1). {_push_later(folder, repo_id, private)}")
    endpoint = os.environ.get("HF_ENDPOINT") or None
    say(f"pushing {folder} to {repo_id} ({'private' if private else 'public'}) on {endpoint or 'the hub'}")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        repo = api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, repo_type="model",
                          commit_message="Upload Thinkless model (thinkless-lite export)")
    except Exception as err:  # every failure: the same "folder intact, push later" message
        raise ExportRunError(f"push to {repo_id} failed: {_why_push_failed(err)}. {_push_later(folder, repo_id, private)}") from err
    url = str(getattr(repo, "url", "") or f"{(endpoint or 'https://huggingface.co').rstrip('/')}/{repo_id}")
    say(f"pushed: {url}")
    return url


def push_existing(out: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None) -> dict:
    """Push a finished export (a folder with ``thinkless_export.json``), pointing its card's snippet at ``repo_id``."""
    out = Path(out)
    marker_path = out / MARKER
    if not marker_path.is_file():
        raise ExportError(f"--out {out} is not a finished export (no {MARKER}); export an adapter first: "
                          f"thinkless-lite export --adapter <adapter folder> --out {out} --push-to-hub {repo_id}")
    check_repo_id(repo_id)
    require_token(token, repo_id)
    marker = json.loads(marker_path.read_text(encoding="utf-8"))
    old = marker.get("model_ref")
    if old and old != repo_id:
        card = out / CARD
        if card.is_file():
            card.write_text(card.read_text(encoding="utf-8").replace(json.dumps(old), json.dumps(repo_id)),
                            encoding="utf-8")
        marker["model_ref"] = repo_id
        marker_path.write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    url = push_folder(out, repo_id, private=private, token=token)
    return {"out": str(out), "kind": marker.get("kind"), "pushed": url}
