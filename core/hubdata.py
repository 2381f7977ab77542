"""Hub datasets at a pinned revision: the local snapshot of `owner/name@revision` and the commit it names.

Torch-free. `huggingface_hub` downloads the dataset repository's files once (or, with `HF_HUB_OFFLINE=1`,
finds them in the HF cache, where `refs/<branch>` names the commit), so that the fingerprint, the data checks
and the stage read one commit's files.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from core.errors import InputError


@lru_cache(maxsize=None)
def hub_snapshot(hub: str) -> Path:
    """The local folder of a Hub dataset's files at the commit `owner/name@revision` names now (a folder
    named after the commit); InputError saying why when neither the network nor the cache has it."""
    # here, not at the top: the fingerprint imports this module, and huggingface_hub's 0.35 s import would slow
    # every `rlhf status` and plan, Hub data or not
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    repo, _, revision = hub.rpartition("@")
    try:
        return Path(snapshot_download(repo, repo_type="dataset", revision=revision))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise InputError(f"{hub}: not in the HF cache and the Hub cannot be reached ({type(e).__name__}); "
                         "download it where there is a network, or fill HF_HUB_CACHE") from None
    except HfHubHTTPError as e:
        raise InputError(f"{hub}: the Hub refused it: {str(e).splitlines()[0]}") from None


def hub_model_problem(hub: str) -> str | None:
    """Why the Hub model `owner/name@revision` cannot be loaded where this runs (not in the HF cache, and the
    Hub unreachable, offline, or without it), or None. Asks the Hub only when the cache does not have it."""
    from huggingface_hub import model_info, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    repo, _, revision = hub.rpartition("@")
    try:
        snapshot_download(repo, revision=revision, local_files_only=True)
        return None
    except LocalEntryNotFoundError:
        pass
    try:
        model_info(repo, revision=revision, timeout=10)
        return None
    except OfflineModeIsEnabled:
        return f"{hub}: not in the HF cache, and HF_HUB_OFFLINE is set; download it where there is a network"
    except HfHubHTTPError as e:
        return f"{hub}: the Hub refused it: {str(e).splitlines()[0]}"
    except Exception as e:  # noqa: BLE001 - the HTTP client's connection errors (httpx's, not OSError)
        return (f"{hub}: not in the HF cache and the Hub cannot be reached ({type(e).__name__}); download it where "
                "there is a network, or fill HF_HUB_CACHE")


def hub_commit(hub: str) -> str:
    """The commit `owner/name@revision` resolves to."""
    return hub_snapshot(hub).name
