"""Topology spec files: parse TOML into a validated, immutable TestbedConfig.

Pure: reads a string (or a file at the very edge, ``load``), returns dataclasses or
raises ConfigError naming the field, the bad value and what is allowed. Nothing
here starts processes or touches the network.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.features import NEEDS_PROJECT_QEMU, feature_names

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,14}$")
FLAVORS = ("minimal", "full")
ACCELS = ("auto", "tcg", "kvm")
MAX_QUEUES = 16
MAX_VCPUS = 16
DEFAULT_QUEUES = 4
# virtio-net's RX ring: QEMU takes a power of two from 256 (its default) to 1024
RX_RING_SIZES = (256, 512, 1024)


@dataclass(frozen=True)
class Netem:
    """Impairments applied to frames delivered to a guest NIC (inside the namespace)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    rate_mbit: float = 0.0

    @property
    def needs_netem(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms or self.loss_pct)

    @property
    def empty(self) -> bool:
        return not (self.needs_netem or self.rate_mbit)


@dataclass(frozen=True)
class NicConfig:
    network: str
    queues: int = DEFAULT_QUEUES
    iommu: bool = False
    # drop frames that find no RX buffer, as a NIC does, instead of holding them in the
    # tap (the project's QEMU only: images/qemu/patches)
    drop_when_full: bool = False
    rx_ring_size: int = RX_RING_SIZES[0]  # descriptors per RX queue
    address: ipaddress.IPv4Interface | None = None  # filled by plan when omitted
    netem: Netem = field(default_factory=Netem)


@dataclass(frozen=True)
class GuestConfig:
    name: str
    vcpus: int = 2
    memory_mb: int = 512
    image: str = "minimal"
    cpu_features: tuple[str, ...] = ()
    nics: tuple[NicConfig, ...] = ()

    @property
    def iommu(self) -> bool:
        return any(n.iommu for n in self.nics)


@dataclass(frozen=True)
class NetworkConfig:
    name: str
    subnet: ipaddress.IPv4Network


@dataclass(frozen=True)
class TestbedConfig:
    __test__ = False

    name: str
    guests: tuple[GuestConfig, ...]
    networks: tuple[NetworkConfig, ...]
    accel: str = "auto"
    boot_timeout_s: float = 120.0

    def needs_project_qemu(self) -> list[str]:
        """What in this spec only the project's patched QEMU provides (empty: none)."""
        wanted = {f for g in self.guests for f in g.cpu_features}
        out = [f"CPU feature '{f}'" for f in sorted(wanted & NEEDS_PROJECT_QEMU)]
        out += [f"guest '{g.name}' NIC {i} drop_when_full" for g in self.guests
                for i, n in enumerate(g.nics) if n.drop_when_full]
        return out

    def guest(self, name: str) -> GuestConfig:
        for g in self.guests:
            if g.name == name:
                return g
        raise ConfigError(f"no guest named '{name}' in testbed '{self.name}'; "
                          f"guests: {', '.join(g.name for g in self.guests)}")


# --- parsing helpers -------------------------------------------------------------

def _keys(where: str, table: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{unknown[0]}'; allowed keys: "
                          f"{', '.join(sorted(allowed))}")
    return table


def _int(where: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected a whole number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}: {value} is out of range; use {lo} to {hi}")
    return value


def _num(where: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number from {lo} to {hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where}: {value} is out of range; use {lo} to {hi}")
    return float(value)


def _name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ConfigError(f"{where}: {value!r} is not a valid name; use 1-15 characters "
                          "a-z, 0-9 and '-', starting with a letter")
    return value


def _choice(where: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not allowed; use one of {', '.join(allowed)}")
    return str(value)


def parse_memory(where: str, value: Any) -> int:
    """Accept 512, "512M", "1G" (MiB granularity) and return MiB."""
    if isinstance(value, int) and not isinstance(value, bool):
        mb = value
    elif isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*([MmGg])i?[Bb]?\s*", value)
        if not m:
            raise ConfigError(f"{where}: {value!r} is not a size; write e.g. 512 (MiB), "
                              "\"512M\" or \"2G\"")
        mb = int(m.group(1)) * (1024 if m.group(2) in "Gg" else 1)
    else:
        raise ConfigError(f"{where}: expected a size such as \"512M\", got {value!r}")
    return _int(where, mb, 128, 16384)


def _netem(where: str, raw: Any) -> Netem:
    t = _keys(where, raw, {"delay_ms", "jitter_ms", "loss_pct", "rate_mbit"})
    ne = Netem(
        delay_ms=_num(f"{where}.delay_ms", t.get("delay_ms", 0), 0, 10000),
        jitter_ms=_num(f"{where}.jitter_ms", t.get("jitter_ms", 0), 0, 10000),
        loss_pct=_num(f"{where}.loss_pct", t.get("loss_pct", 0), 0, 100),
        rate_mbit=_num(f"{where}.rate_mbit", t.get("rate_mbit", 0), 0, 100000),
    )
    if ne.jitter_ms and not ne.delay_ms:
        raise ConfigError(f"{where}.jitter_ms: jitter needs a delay_ms greater than 0")
    return ne


def _nic(where: str, raw: Any, networks: dict[str, NetworkConfig]) -> NicConfig:
    t = _keys(where, raw, {"network", "queues", "iommu", "drop_when_full", "rx_ring_size",
                           "address", "netem"})
    if "network" not in t:
        raise ConfigError(f"{where}.network: missing; name one of the [[network]] tables "
                          f"({', '.join(networks) or 'none defined'})")
    net = t["network"]
    if net not in networks:
        raise ConfigError(f"{where}.network: no network named {net!r}; defined: "
                          f"{', '.join(networks) or 'none (add a [[network]] table)'}")
    iommu = t.get("iommu", False)
    if not isinstance(iommu, bool):
        raise ConfigError(f"{where}.iommu: expected true or false, got {iommu!r}")
    drop = t.get("drop_when_full", False)
    if not isinstance(drop, bool):
        raise ConfigError(f"{where}.drop_when_full: expected true or false, got {drop!r}")
    ring = t.get("rx_ring_size", RX_RING_SIZES[0])
    if isinstance(ring, bool) or ring not in RX_RING_SIZES:
        raise ConfigError(f"{where}.rx_ring_size: expected one of "
                          f"{', '.join(map(str, RX_RING_SIZES))}, got {ring!r}")
    address = None
    if "address" in t:
        try:
            address = ipaddress.IPv4Interface(t["address"])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}.address: {t['address']!r} is not an IPv4 address "
                              "with prefix, e.g. \"10.77.0.5/24\"") from exc
        if address.network != networks[net].subnet:
            raise ConfigError(f"{where}.address: {address} is outside network {net!r} "
                              f"({networks[net].subnet})")
    return NicConfig(
        network=net,
        queues=_int(f"{where}.queues", t.get("queues", DEFAULT_QUEUES), 1, MAX_QUEUES),
        iommu=iommu,
        drop_when_full=drop,
        rx_ring_size=ring,
        address=address,
        netem=_netem(f"{where}.netem", t.get("netem", {})),
    )


def _guest(where: str, raw: Any, networks: dict[str, NetworkConfig],
           defaults: dict[str, Any]) -> GuestConfig:
    t = _keys(where, raw, {"name", "vcpus", "memory", "image", "cpu_features", "nic"})
    t = {**defaults, **t}
    if "name" not in t:
        raise ConfigError(f"{where}.name: missing; every [[guest]] needs a name")
    feats = t.get("cpu_features", [])
    if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
        raise ConfigError(f"{where}.cpu_features: expected a list of names, got {feats!r}")
    for f in feats:
        if f not in feature_names():
            raise ConfigError(f"{where}.cpu_features: unknown feature {f!r}; known: "
                              f"{', '.join(feature_names())}")
    nics_raw = t.get("nic", [])
    if not isinstance(nics_raw, list):
        raise ConfigError(f"{where}.nic: expected an array of tables ([[guest.nic]])")
    return GuestConfig(
        name=_name(f"{where}.name", t["name"]),
        vcpus=_int(f"{where}.vcpus", t.get("vcpus", 2), 1, MAX_VCPUS),
        memory_mb=parse_memory(f"{where}.memory", t.get("memory", 512)),
        image=_choice(f"{where}.image", t.get("image", "minimal"), FLAVORS),
        cpu_features=tuple(dict.fromkeys(feats)),
        nics=tuple(_nic(f"{where}.nic[{i}]", n, networks) for i, n in enumerate(nics_raw)),
    )


def parse(text: str, *, default_name: str = "testbed") -> TestbedConfig:
    """Parse and validate a spec from TOML text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"spec is not valid TOML: {exc}") from exc
    return parse_dict(raw, default_name=default_name)


def parse_dict(raw: dict[str, Any], *, default_name: str = "testbed") -> TestbedConfig:
    """Validate a spec already read into plain data (TOML tables as dicts)."""
    top = _keys("spec", raw, {"name", "accel", "boot_timeout_s", "defaults", "network", "guest"})
    defaults = _keys("defaults", top.get("defaults", {}),
                     {"vcpus", "memory", "image", "cpu_features"})
    nets_raw = top.get("network", [])
    if not isinstance(nets_raw, list):
        raise ConfigError("network: expected an array of tables ([[network]])")
    networks: dict[str, NetworkConfig] = {}
    for i, n in enumerate(nets_raw):
        where = f"network[{i}]"
        t = _keys(where, n, {"name", "subnet"})
        name = _name(f"{where}.name", t.get("name"))
        if name in networks:
            raise ConfigError(f"{where}.name: network {name!r} is defined twice")
        try:
            subnet = ipaddress.IPv4Network(t.get("subnet", f"10.77.{i}.0/24"))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}.subnet: {t.get('subnet')!r} is not an IPv4 network "
                              "such as \"10.77.0.0/24\"") from exc
        if subnet.prefixlen > 29:
            raise ConfigError(f"{where}.subnet: /{subnet.prefixlen} is too small; "
                              "use /29 or larger")
        networks[name] = NetworkConfig(name=name, subnet=subnet)
    guests_raw = top.get("guest", [])
    if not isinstance(guests_raw, list) or not guests_raw:
        raise ConfigError("guest: the spec needs at least one [[guest]] table")
    guests = tuple(_guest(f"guest[{i}]", g, networks, defaults) for i, g in enumerate(guests_raw))
    seen: set[str] = set()
    for i, g in enumerate(guests):
        if g.name in seen:
            raise ConfigError(f"guest[{i}].name: guest {g.name!r} is defined twice")
        seen.add(g.name)
    for net in networks.values():
        members = sum(1 for g in guests for n in g.nics if n.network == net.name)
        if members > net.subnet.num_addresses - 2:
            raise ConfigError(f"network {net.name!r}: {members} NICs do not fit in {net.subnet}")
    return TestbedConfig(
        name=_name("name", top.get("name", default_name)),
        guests=guests,
        networks=tuple(networks.values()),
        accel=_choice("accel", top.get("accel", "auto"), ACCELS),
        boot_timeout_s=_num("boot_timeout_s", top.get("boot_timeout_s", 120), 5, 3600),
    )


def to_dict(cfg: TestbedConfig) -> dict[str, Any]:
    """The config as spec data again: ``parse_dict(to_dict(cfg)) == cfg`` for every
    config (a state folder keeps this to rebuild the plan when attaching)."""
    def nic(n: NicConfig) -> dict[str, Any]:
        out: dict[str, Any] = {"network": n.network, "queues": n.queues, "iommu": n.iommu,
                               "drop_when_full": n.drop_when_full,
                               "rx_ring_size": n.rx_ring_size,
                               "netem": {k: v for k, v in vars(n.netem).items() if v}}
        if n.address is not None:
            out["address"] = str(n.address)
        return out

    return {
        "name": cfg.name, "accel": cfg.accel, "boot_timeout_s": cfg.boot_timeout_s,
        "network": [{"name": n.name, "subnet": str(n.subnet)} for n in cfg.networks],
        "guest": [{"name": g.name, "vcpus": g.vcpus, "memory": g.memory_mb, "image": g.image,
                   "cpu_features": list(g.cpu_features), "nic": [nic(n) for n in g.nics]}
                  for g in cfg.guests],
    }


def load(path: Path) -> TestbedConfig:
    """Read a spec file; the file stem is the default testbed name."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read spec file {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"spec file {path} is not UTF-8 text (byte {exc.start}); save it "
                          "as UTF-8") from exc
    stem = re.sub(r"[^a-z0-9-]", "-", path.stem.lower())[:15].strip("-") or "testbed"
    if not stem[0].isalpha():
        stem = "t" + stem[:14]
    return parse(text, default_name=stem)
