"""From a validated TestbedConfig to a TestbedPlan: every name, address and MAC decided.

Pure and deterministic: the same config always yields the same plan, so unit tests
can check names and addresses, and ``gc`` can recompute what a testbed would own.
Host-unique names (taps live briefly in the root namespace) carry a hash of the
testbed name, so two testbeds never collide.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass

from harness.config import GuestConfig, NetworkConfig, NicConfig, TestbedConfig
from harness.errors import ConfigError

NETNS_PREFIX = "hb-"
TAP_PREFIX = "hbt"


@dataclass(frozen=True)
class NicPlan:
    index: int  # position among the guest's data NICs
    config: NicConfig
    tap: str  # host-unique tap name (root namespace first, then moved to the netns)
    bridge: str  # bridge inside the namespace
    mac: str
    address: ipaddress.IPv4Interface
    netdev_id: str
    device_id: str

    @property
    def queues(self) -> int:
        return self.config.queues

    @property
    def vectors(self) -> int:
        # one vector per RX and TX queue, one for the control queue, one for config
        return 2 * self.config.queues + 2


@dataclass(frozen=True)
class GuestPlan:
    config: GuestConfig
    index: int
    nics: tuple[NicPlan, ...]

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class NetworkPlan:
    config: NetworkConfig
    bridge: str


@dataclass(frozen=True)
class TestbedPlan:
    __test__ = False

    config: TestbedConfig
    netns: str
    networks: tuple[NetworkPlan, ...]
    guests: tuple[GuestPlan, ...]

    @property
    def name(self) -> str:
        return self.config.name

    def guest(self, name: str) -> GuestPlan:
        for g in self.guests:
            if g.name == name:
                return g
        raise ConfigError(f"no guest named '{name}' in testbed '{self.name}'; "
                          f"guests: {', '.join(g.name for g in self.guests)}")


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("/".join(parts).encode()).digest()


def tap_name(testbed: str, guest: str, nic: int) -> str:
    return TAP_PREFIX + _digest(testbed, guest, str(nic)).hex()[:10]


def mac_address(testbed: str, guest: str, nic: int) -> str:
    d = _digest("mac", testbed, guest, str(nic))
    # 52:54:00 is QEMU's locally administered prefix; 0x01 bit of first octet stays 0
    return "52:54:00:" + ":".join(f"{b:02x}" for b in d[:3])


def netns_name(testbed: str) -> str:
    return NETNS_PREFIX + testbed


def make_plan(cfg: TestbedConfig) -> TestbedPlan:
    bridges = {net.name: f"br{i}" for i, net in enumerate(cfg.networks)}
    hosts = {net.name: net.subnet.hosts() for net in cfg.networks}
    taken: dict[str, set[ipaddress.IPv4Address]] = {net.name: set() for net in cfg.networks}
    for g in cfg.guests:
        for n in g.nics:
            if n.address is not None:
                if n.address.ip in taken[n.network]:
                    raise ConfigError(f"guest {g.name!r}: address {n.address} is used twice")
                taken[n.network].add(n.address.ip)
    subnets = {net.name: net.subnet for net in cfg.networks}
    guests = []
    for gi, g in enumerate(cfg.guests):
        nics = []
        for ni, n in enumerate(g.nics):
            addr = n.address
            if addr is None:
                ip = next(ip for ip in hosts[n.network] if ip not in taken[n.network])
                taken[n.network].add(ip)
                addr = ipaddress.IPv4Interface(f"{ip}/{subnets[n.network].prefixlen}")
            nics.append(NicPlan(
                index=ni, config=n, tap=tap_name(cfg.name, g.name, ni),
                bridge=bridges[n.network], mac=mac_address(cfg.name, g.name, ni),
                address=addr, netdev_id=f"data{ni}", device_id=f"nic{ni}",
            ))
        guests.append(GuestPlan(config=g, index=gi, nics=tuple(nics)))
    return TestbedPlan(
        config=cfg,
        netns=netns_name(cfg.name),
        networks=tuple(NetworkPlan(config=n, bridge=bridges[n.name]) for n in cfg.networks),
        guests=tuple(guests),
    )
