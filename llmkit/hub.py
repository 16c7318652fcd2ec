"""Hub errors as one line: what went wrong with which repo, and the fix.

``huggingface_hub`` and ``datasets`` report a missing repo, a gated repo, a missing revision or
offline mode in a dozen exception types, several pages of traceback deep.  ``explain`` turns
any of them into one ``LlmkitError`` naming the repo and what to do::

    try:
        ds = datasets.load_dataset(repo, name, revision=rev)
    except Exception as exc:
        raise hub.explain(exc, repo, "dataset", rev) from None

An exception it does not recognise becomes a generic
"could not load" line with the exception's first line, so callers can always raise its result.
"""

from __future__ import annotations

import os

from llmkit.config import LlmkitError

LOGIN = "log in with `hf auth login` or set HF_TOKEN"


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline() -> bool:
    return any(os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def page(repo_id: str, repo_type: str = "dataset") -> str:
    return f"{endpoint()}/{'datasets/' if repo_type == 'dataset' else ''}{repo_id}"


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def explain(exc: BaseException, repo_id: str, repo_type: str = "dataset", revision: str | None = None,
            what: str | None = None) -> LlmkitError:
    """One LlmkitError line for an exception raised while loading ``repo_id`` from the hub."""
    kind = what or repo_type
    rev = f" at revision {revision!r}" if revision and revision != "main" else ""
    download = f"`llmkit download {repo_id}{' --repo_type model' if repo_type == 'model' else ''}`"
    names = {type(e).__name__ for e in _chain(exc)}
    texts = " | ".join(str(e) for e in _chain(exc))
    if isinstance(exc, LlmkitError):
        return exc
    if "HfUriError" in names or "must be 'namespace/name'" in texts:
        return LlmkitError(
            f"{kind} {repo_id!r}: the hub id has no namespace, which huggingface_hub >= 1.31 rejects "
            f"('Repository id must be namespace/name'); use the namespaced id (e.g. facebook/xnli for xnli)")
    if "GatedRepoError" in names or "is a gated" in texts:
        return LlmkitError(
            f"{kind} {repo_id} is gated: accept its conditions on {page(repo_id, repo_type)} with your account, "
            f"then {LOGIN}")
    if "RevisionNotFoundError" in names or "Revision Not Found" in texts or "Invalid rev id" in texts:
        return LlmkitError(
            f"{kind} {repo_id} has no revision {revision!r} on the hub: check the branch, tag or commit "
            f"(see {page(repo_id, repo_type)}/tree/main)")
    if "Dataset scripts are no longer supported" in texts:
        script = texts.split("but found", 1)[-1].strip().split()[0] if "but found" in texts else "a .py script"
        return LlmkitError(
            f"{kind} {repo_id}{rev} is published with a loading script ({script}), which datasets >= 4 no longer "
            f"runs: load its parquet conversion (revision 'refs/convert/parquet') or a maintained copy, or write "
            f"a local copy")
    offline_now = offline() or "OfflineModeIsEnabled" in names
    if offline_now and (
        names & {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectionError", "FileNotFoundError",
                 "DatasetNotFoundError", "HfHubHTTPError"} or "offline" in texts.lower()):
        return LlmkitError(
            f"{kind} {repo_id}{rev} is not in the local cache and offline mode is on (HF_HUB_OFFLINE / "
            f"HF_DATASETS_OFFLINE): run {download} while online, or unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE")
    if "RepositoryNotFoundError" in names or "doesn't exist on the Hub" in texts or "Repository Not Found" in texts:
        return LlmkitError(
            f"{kind} {repo_id} does not exist on the hub ({endpoint()}) or is private: check the id; "
            f"for a private repo, {LOGIN}")
    if "RemoteEntryNotFoundError" in names or "EntryNotFoundError" in names or "Entry Not Found" in texts:
        return LlmkitError(f"{kind} {repo_id}{rev}: a file it needs is missing on the hub ({_first_line(exc)})")
    if names & {"ConnectError", "ConnectTimeout", "ReadTimeout", "TimeoutException", "ConnectionError"} or \
            "Couldn't reach" in texts:
        return LlmkitError(
            f"{kind} {repo_id}: cannot reach the hub at {endpoint()} ({_first_line(exc)}); check the network, or "
            f"run {download} where it works and set HF_HUB_OFFLINE=1")
    return LlmkitError(f"could not load {kind} {repo_id}{rev}: {type(exc).__name__}: {_first_line(exc)}")


def check_repo(repo_id: str, repo_type: str = "model", revision: str | None = None,
               probe_file: str | None = None) -> None:
    """Fail early, in one line, if ``repo_id`` cannot be loaded: not on the hub, gated without a
    token, no such revision, or offline mode without it in the cache.  ``probe_file`` (default
    ``config.json`` for models, ``README.md`` for datasets) is the file whose access is tried,
    which is where the hub refuses a gated repo."""
    import huggingface_hub as hf

    probe = probe_file or ("config.json" if repo_type == "model" else "README.md")
    if offline():
        if repo_type == "model":
            cached = hf.try_to_load_from_cache(repo_id, probe, revision=revision, repo_type=repo_type)
            if not isinstance(cached, str):
                raise explain(hf.errors.OfflineModeIsEnabled("offline"), repo_id, repo_type, revision)
        return  # datasets keeps its own cache: let datasets decide, explain() translates its error
    try:
        hf.HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision)
        hf.get_hf_file_metadata(hf.hf_hub_url(repo_id, probe, repo_type=repo_type, revision=revision))
    except hf.errors.EntryNotFoundError:
        return  # the repo and revision exist and are readable; the probe file is just not there
    except Exception as exc:
        raise explain(exc, repo_id, repo_type, revision) from None
