"""`kaggle://` and `hf://` handles: download with kagglehub / huggingface_hub.

Both are optional extras (`pip install '.[kaggle]'` / `'.[hf]'` from a checkout).
Files land in those libraries' own caches, and a handle already there loads
without network. Without network, a download fails within seconds (a quick
DNS and TCP probe before the library's own retries) with a `ConnectionError`
that names the handle and says how to load local files instead.
"""

import os
import socket
import threading

KAGGLE_PREFIX = "kaggle://"
HF_PREFIX = "hf://"
KAGGLE_HOST = "api.kaggle.com"
HF_ENDPOINT_ENV = "HF_ENDPOINT"
HF_DEFAULT_HOST = "huggingface.co"
PROBE_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


def _local_hint(handle):
    identifier = handle.split("://", 1)[-1].strip("/")
    if handle.startswith(KAGGLE_PREFIX):
        fetch = (
            f"run `kagglehub.model_download({identifier!r})` on a connected machine (or download "
            "the model from kaggle.com), copy the files here"
        )
    else:
        fetch = (
            f"run `hf download {identifier} --local-dir DIR` on a connected machine, copy DIR here"
        )
    return (
        f"To work offline, {fetch} and pass that local directory to `from_preset` "
        "(a Keras preset directory or a transformers checkpoint directory), or a "
        "`.gguf` file. `from_preset('gemma3_270m')` works with no network."
    )


def parse(handle):
    """`(scheme, id)`.

    `("kaggle", "owner/model/framework/variation[/version]")` or `("hf", "org/repo")`.
    """
    if handle.startswith(KAGGLE_PREFIX):
        path = handle[len(KAGGLE_PREFIX) :].strip("/")
        parts = path.split("/")
        if not 4 <= len(parts) <= 5 or not all(parts):
            raise ValueError(
                f"Invalid Kaggle handle {handle!r}: expected "
                "`kaggle://owner/model/framework/variation/version` (version optional), e.g. "
                "`kaggle://keras/gemma3/keras/gemma3_1b/3`."
            )
        return "kaggle", path
    if handle.startswith(HF_PREFIX):
        path = handle[len(HF_PREFIX) :].strip("/")
        parts = path.split("/")
        if len(parts) != 2 or not all(parts):
            raise ValueError(
                f"Invalid Hugging Face handle {handle!r}: expected `hf://org/repo`, e.g. `hf://google/gemma-3-1b-it`."
            )
        return "hf", path
    raise ValueError(f"{handle!r} is not a `kaggle://` or `hf://` handle.")


def _import(module, extra, package):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ImportError(
            f"Downloading this handle needs the `{package}` package. Install it with:\n"
            f"    pip install {package}   (or, in a keras_gemma checkout: pip install '.[{extra}]')"
        ) from None


def _hf_host():
    endpoint = os.environ.get(HF_ENDPOINT_ENV, "")
    if "://" in endpoint:
        endpoint = endpoint.split("://", 1)[1]
    return endpoint.split("/", 1)[0].split(":", 1)[0] or HF_DEFAULT_HOST


def _reachable(host, port=443, timeout=PROBE_TIMEOUT_S):
    """True if `host` resolves and accepts a TCP connection within `timeout` seconds."""
    result = {}

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError as error:
            result["error"] = error

    # getaddrinfo has no timeout of its own: run the probe in a thread.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return result.get("ok", False), result.get("error")


def _offline_error(handle, reason):
    return ConnectionError(f"Cannot download {handle!r}: {reason}. {_local_hint(handle)}")


def _download_kaggle(handle, model_id):
    kagglehub = _import("kagglehub", "kaggle", "kagglehub")
    try:
        # A versioned handle already in kagglehub's cache loads without network.
        return kagglehub.model_download(model_id)
    except Exception as first_error:  # kagglehub raises its own types offline.
        ok, error = _reachable(KAGGLE_HOST)
        if not ok:
            raise _offline_error(handle, f"{KAGGLE_HOST} is unreachable ({error})") from None
        raise ConnectionError(
            f"Downloading {handle!r} from Kaggle failed: {first_error}. {_local_hint(handle)}"
        ) from first_error


def _download_hf(handle, repo_id):
    huggingface_hub = _import("huggingface_hub", "hf", "huggingface_hub")
    patterns = ["*.json", "*.safetensors", "tokenizer.model", "*.h5", "assets/*", "*.spm", "*.gguf"]
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE
    if not offline:
        ok, error = _reachable(_hf_host())
        offline = not ok
        reason = f"{_hf_host()} is unreachable ({error})"
    else:
        reason = "HF_HUB_OFFLINE is set"
    if offline:
        # Files already in the local Hugging Face cache still load.
        try:
            return huggingface_hub.snapshot_download(
                repo_id, allow_patterns=patterns, local_files_only=True
            )
        except Exception:
            raise _offline_error(
                handle, f"{reason}, and it is not in the local Hugging Face cache"
            ) from None
    try:
        return huggingface_hub.snapshot_download(
            repo_id, allow_patterns=patterns, etag_timeout=PROBE_TIMEOUT_S
        )
    except Exception as error:  # huggingface_hub raises its own error types.
        raise ConnectionError(
            f"Downloading {handle!r} from Hugging Face failed: {type(error).__name__}: {error}. "
            "Gated Gemma repos need `huggingface-cli login` after accepting the license. "
            f"{_local_hint(handle)}"
        ) from error


def download(handle):
    """Downloads a `kaggle://` or `hf://` handle; returns the local directory.

    Args:
        handle: `kaggle://owner/model/framework/variation/version` or
            `hf://org/repo`.

    Returns:
        The local path (a directory in kagglehub's or huggingface_hub's cache).

    Raises:
        ImportError: the library for the handle is not installed (names the
            pip extra).
        ConnectionError: offline or the download failed; the message names
            the handle and how to use local files instead.
    """
    handle = os.fspath(handle)
    scheme, identifier = parse(handle)
    if scheme == "kaggle":
        return os.fspath(_download_kaggle(handle, identifier))
    return os.fspath(_download_hf(handle, identifier))
