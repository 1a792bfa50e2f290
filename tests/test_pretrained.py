from __future__ import annotations

import json

import pytest
import torch
from tiny import TinyNet

import lightning_automl.core.pretrained as registry
from lightning_automl.pretrained import (
    FORMAT_VERSION,
    PretrainedError,
    list_pretrained,
    read_card,
    read_pretrained,
)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    net = TinyNet(in_features=5, hidden=7)
    card = net.save_pretrained(
        tmp_path / "tiny-net", tasks=["toy"], metrics={"loss": 0.5}, command="make tiny"
    )
    return net, card, tmp_path / "tiny-net"


def test_round_trip_rebuilds_the_same_network(saved):
    net, _, stem = saved
    loaded = TinyNet.from_pretrained(stem)
    assert (loaded.in_features, loaded.hidden) == (5, 7)
    x = torch.randn(3, 5)
    torch.testing.assert_close(loaded(x), net(x), rtol=0, atol=0)
    for suffix in (".json", ".safetensors"):
        assert TinyNet.from_pretrained(f"{stem}{suffix}").hidden == 7


def test_card_records_what_rebuilds_and_verifies(saved):
    _, card, stem = saved
    on_disk = json.loads((stem.parent / "tiny-net.json").read_text())
    assert on_disk["name"] == "tiny-net" == card.name
    assert on_disk["method"] == "tiny"
    assert on_disk["format_version"] == FORMAT_VERSION
    assert on_disk["config"] == {"in_features": 5, "hidden": 7}
    assert on_disk["tasks"] == ["toy"] and on_disk["metrics"] == {"loss": 0.5}
    assert on_disk["command"] == "make tiny"
    assert len(on_disk["sha256"]) == 64
    assert read_card(stem) == card


def test_tampered_weights_are_refused(saved):
    _, _, stem = saved
    weights = stem.parent / "tiny-net.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(PretrainedError, match="checksum mismatch"):
        TinyNet.from_pretrained(stem)


def test_newer_format_version_is_refused(saved):
    _, _, stem = saved
    card_path = stem.parent / "tiny-net.json"
    card = json.loads(card_path.read_text())
    card["format_version"] = FORMAT_VERSION + 1
    card_path.write_text(json.dumps(card))
    with pytest.raises(PretrainedError, match="upgrade lightning-automl"):
        read_pretrained(stem)


def test_malformed_card_names_the_fields(saved):
    _, _, stem = saved
    card_path = stem.parent / "tiny-net.json"
    card = json.loads(card_path.read_text())
    del card["sha256"]
    card["colour"] = "blue"
    card_path.write_text(json.dumps(card))
    with pytest.raises(
        PretrainedError, match=r"missing fields \['sha256'\].*unknown fields \['colour'\]"
    ):
        read_card(stem)


def test_unknown_name_lists_the_known_ones(saved, monkeypatch):
    _, _, stem = saved
    monkeypatch.setattr(registry, "SHIPPED_DIR", stem.parent)
    assert [card.name for card in list_pretrained()] == ["tiny-net"]
    with pytest.raises(
        PretrainedError, match=r"unknown pretrained component 'nope'.*known: tiny-net"
    ):
        TinyNet.from_pretrained("nope")


def test_shipped_name_is_found_by_name(saved, monkeypatch):
    _, _, stem = saved
    monkeypatch.setattr(registry, "SHIPPED_DIR", stem.parent)
    assert TinyNet.from_pretrained("tiny-net").hidden == 7
    assert list_pretrained("lhopt-*") == []


def test_other_methods_weights_are_refused(saved):
    _, _, stem = saved

    class OtherNet(TinyNet):
        pretrained_method = "other"

    with pytest.raises(PretrainedError, match="method 'tiny'; OtherNet loads method 'other'"):
        OtherNet.from_pretrained(stem)


def test_loading_never_unpickles(saved, monkeypatch):
    _, _, stem = saved

    def no_pickle(*args, **kwargs):
        raise AssertionError("torch.load must not be used for pretrained weights")

    monkeypatch.setattr(torch, "load", no_pickle)
    TinyNet.from_pretrained(stem)


def test_unserialisable_config_is_a_clear_error(tmp_path):
    class BadConfigNet(TinyNet):
        def pretrained_config(self):
            return {"activation": torch.nn.Tanh}

    with pytest.raises(PretrainedError, match="JSON-serialisable"):
        BadConfigNet().save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad.json").exists()


@pytest.mark.parametrize("card", list_pretrained(), ids=lambda card: card.name)
def test_every_shipped_component_loads_and_verifies(card):
    """Parametrised over the registry: each new shipped file is checked automatically."""
    loaded_card, weights = read_pretrained(card.name)
    assert loaded_card == card and weights
    assert card.command, "a shipped component records the command that trained it"
    assert (registry.SHIPPED_DIR / f"{card.name}.safetensors").stat().st_size < 5 * 2**20
