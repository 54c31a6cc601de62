"""Hub downloads fail at once, with a clear message, when the Hub cannot be reached."""

from __future__ import annotations

import socket

import datasets
import huggingface_hub.constants
import pytest
import timm

import adnify
from adnify.errors import AdnifyError
from adnify.io.data import load_image_data
from adnify.io.hub import hub_or_cache, hub_reachable


class _Connection:
    def close(self) -> None:
        pass


@pytest.fixture
def online_mode(monkeypatch):
    """The libraries believe they are online (the test suite runs them offline); no proxy."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def _unreachable(monkeypatch) -> list[tuple]:
    tried: list[tuple] = []

    def refuse(address, timeout=None):
        tried.append(address)
        raise OSError("Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return tried


def test_reachability_is_one_connection_to_the_hubs_host(monkeypatch):
    tried = _unreachable(monkeypatch)
    assert not hub_reachable()
    assert tried == [("huggingface.co", 443)]
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080")
    hub_reachable()
    assert tried[-1] == ("mirror.example", 8080)
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: _Connection())
    assert hub_reachable()


def test_an_unreachable_hub_means_offline_mode_for_the_download_only(online_mode, monkeypatch):
    _unreachable(monkeypatch)
    with hub_or_cache() as online:
        assert not online
        assert huggingface_hub.constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE
    assert not huggingface_hub.constants.HF_HUB_OFFLINE and not datasets.config.HF_HUB_OFFLINE


def test_a_reachable_hub_an_offline_setting_or_a_proxy_change_nothing(online_mode, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: _Connection())
    with hub_or_cache() as online:
        assert online and not huggingface_hub.constants.HF_HUB_OFFLINE
    tried = _unreachable(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    with hub_or_cache() as online:
        assert online and not huggingface_hub.constants.HF_HUB_OFFLINE
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with hub_or_cache() as online:
        assert not online
    assert tried == []  # neither with a proxy nor when already offline


def test_pretrained_weights_from_an_unreachable_hub_fail_at_once_and_clearly(online_mode, monkeypatch):
    _unreachable(monkeypatch)
    seen = []
    real = timm.create_model

    def spy(*args, **kwargs):
        seen.append(huggingface_hub.constants.HF_HUB_OFFLINE)
        return real(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", spy)
    with pytest.raises(AdnifyError, match="cannot be reached.*--checkpoint"):
        adnify.convert("resnet18", pretrained=True)
    assert seen == [True]  # timm ran in offline mode: no retries


def test_a_hub_dataset_from_an_unreachable_hub_fails_clearly(online_mode, monkeypatch):
    _unreachable(monkeypatch)
    with pytest.raises(AdnifyError, match="cannot be reached.*builtin:digits"):
        load_image_data("some-user/some-dataset")
