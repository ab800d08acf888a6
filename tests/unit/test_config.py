"""Spec validation: good specs parse, every bad field gets a message naming it."""

from __future__ import annotations

import ipaddress

import pytest

from harness import config
from harness.errors import ConfigError

GOOD = """
name = "tb"
[[network]]
name = "data"
subnet = "10.80.0.0/24"
[[guest]]
name = "a"
vcpus = 4
memory = "1G"
cpu_features = ["fsgsbase", "rdrand"]
  [[guest.nic]]
  network = "data"
  queues = 8
  iommu = true
  address = "10.80.0.9/24"
  [guest.nic.netem]
  delay_ms = 5
  loss_pct = 0.5
[[guest]]
name = "b"
  [[guest.nic]]
  network = "data"
"""


def test_good_spec_parses() -> None:
    cfg = config.parse(GOOD)
    a, b = cfg.guests
    assert (a.vcpus, a.memory_mb, a.cpu_features) == (4, 1024, ("fsgsbase", "rdrand"))
    assert a.nics[0].queues == 8 and a.iommu and not b.iommu
    assert a.nics[0].address == ipaddress.IPv4Interface("10.80.0.9/24")
    assert a.nics[0].netem.delay_ms == 5 and a.nics[0].netem.needs_netem
    assert b.nics[0].queues == config.DEFAULT_QUEUES and b.memory_mb == 512


@pytest.mark.parametrize("mutation, field", [
    (("queues = 8", "queues = 17"), "guest[0].nic[0].queues"),
    (("queues = 8", "queues = 0"), "guest[0].nic[0].queues"),
    (("queues = 8", "queues = \"four\""), "guest[0].nic[0].queues"),
    (("vcpus = 4", "vcpus = 99"), "guest[0].vcpus"),
    (('memory = "1G"', 'memory = "lots"'), "guest[0].memory"),
    (('memory = "1G"', "memory = 64"), "guest[0].memory"),
    (('"fsgsbase", "rdrand"', '"fsgsbase", "warp"'), "guest[0].cpu_features"),
    (('network = "data"\n  queues', 'network = "nope"\n  queues'), "guest[0].nic[0].network"),
    (('address = "10.80.0.9/24"', 'address = "10.99.0.9/24"'), "guest[0].nic[0].address"),
    (('address = "10.80.0.9/24"', 'address = "banana"'), "guest[0].nic[0].address"),
    (("iommu = true", "iommu = 1"), "guest[0].nic[0].iommu"),
    (("delay_ms = 5", "delay_ms = -1"), "guest[0].nic[0].netem.delay_ms"),
    (("loss_pct = 0.5", "loss_pct = 200"), "guest[0].nic[0].netem.loss_pct"),
    (('name = "a"', 'name = "Bad_Name"'), "guest[0].name"),
    (('name = "b"', 'name = "a"'), "guest[1].name"),
    (("queues = 8", "queus = 8"), "guest[0].nic[0]: unknown key 'queus'"),
    (('subnet = "10.80.0.0/24"', 'subnet = "10.80.0.0/30"'), "network[0].subnet"),
])
def test_bad_field_is_named(mutation: tuple[str, str], field: str) -> None:
    old, new = mutation
    assert old in GOOD
    with pytest.raises(ConfigError) as exc:
        config.parse(GOOD.replace(old, new, 1))
    msg = str(exc.value)
    assert field in msg
    assert "\n" not in msg


def test_no_guest_and_bad_toml() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        config.parse('name = "x"')
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.parse("[[guest]\nname=")


def test_unknown_top_level_key_lists_allowed() -> None:
    with pytest.raises(ConfigError, match=r"allowed keys: .*guest"):
        config.parse("bogus = 1\n" + GOOD)


def test_defaults_table_applies() -> None:
    cfg = config.parse('[defaults]\nvcpus = 1\nimage = "full"\n[[guest]]\nname = "a"\n')
    assert cfg.guests[0].vcpus == 1 and cfg.guests[0].image == "full"


def test_load_uses_file_stem_as_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "My_Bed.toml"
    p.write_text('[[guest]]\nname = "a"\n')
    assert config.load(p).name == "my-bed"
    with pytest.raises(ConfigError, match="cannot read spec file"):
        config.load(tmp_path / "missing.toml")


FULL = """
name = "every-field"
accel = "tcg"
boot_timeout_s = 33.5
[[network]]
name = "data"
subnet = "10.9.0.0/24"
[[network]]
name = "back"
[[guest]]
name = "a"
vcpus = 3
memory = "1G"
image = "full"
cpu_features = ["fsgsbase", "uintr"]
  [[guest.nic]]
  network = "data"
  queues = 3
  iommu = true
  drop_when_full = true
  rx_ring_size = 1024
  address = "10.9.0.7/24"
  [guest.nic.netem]
  delay_ms = 5
  jitter_ms = 1
  loss_pct = 0.5
  rate_mbit = 100
  [[guest.nic]]
  network = "back"
[[guest]]
name = "b"
"""


def test_to_dict_round_trips_every_field() -> None:
    """What a state folder keeps rebuilds the same config (nothing is lost on attach)."""
    cfg = config.parse(FULL)
    assert config.parse_dict(config.to_dict(cfg)) == cfg
    nic = cfg.guests[0].nics[0]
    assert nic.drop_when_full and nic.rx_ring_size == 1024 and nic.iommu


def test_to_dict_leaves_no_field_out() -> None:
    """Every dataclass field of a NIC and guest is carried (a new field must be too)."""
    import dataclasses

    data = config.to_dict(config.parse(FULL))
    nic_keys = set(data["guest"][0]["nic"][0])
    assert {f.name for f in dataclasses.fields(config.NicConfig)} <= nic_keys
    guest_keys = set(data["guest"][0]) | {"memory_mb", "nics"}
    assert {f.name for f in dataclasses.fields(config.GuestConfig)} <= guest_keys


def test_spec_that_is_not_utf8_is_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    spec = tmp_path / "latin1.toml"
    spec.write_bytes('[[guest]]\nname = "caf\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        config.load(spec)
