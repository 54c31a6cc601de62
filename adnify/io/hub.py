"""Hugging Face Hub access that fails fast when the Hub cannot be reached.

Offline, ``huggingface_hub`` and ``datasets`` retry every request before giving up: asking for
pretrained weights or a Hub dataset took 30-50 s to fail on a machine without network. Before such a
download, :func:`hub_or_cache` opens one TCP connection to the Hub's host (a few seconds at most).
If that fails, the download runs in the libraries' offline mode, where the local cache still
serves and a missing file fails at once. Nothing changes when ``HF_HUB_OFFLINE`` is already set, or
when a proxy is configured (the proxy may reach what this machine cannot).
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator
from urllib.parse import urlparse

__all__ = ["hub_or_cache", "hub_reachable"]

_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host (``HF_ENDPOINT``, default huggingface.co) opens."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme != "http" else 80)
    try:
        socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def hub_or_cache() -> Iterator[bool]:
    """Run a Hub download inside; yields False when it runs offline (from the local cache only)."""
    import huggingface_hub.constants as hub_constants

    if hub_constants.HF_HUB_OFFLINE or any(os.environ.get(v) for v in _PROXY_VARIABLES) or hub_reachable():
        yield not hub_constants.HF_HUB_OFFLINE
        return
    import datasets.config as datasets_config

    saved = hub_constants.HF_HUB_OFFLINE, datasets_config.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = datasets_config.HF_HUB_OFFLINE = True
    try:
        yield False
    finally:
        hub_constants.HF_HUB_OFFLINE, datasets_config.HF_HUB_OFFLINE = saved
