"""Plans and QEMU command lines are pure functions of the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import config, plan, qemu_cmd
from harness.errors import ConfigError

SPEC = """
name = "tb"
[[network]]
name = "data"
[[guest]]
name = "a"
cpu_features = ["fsgsbase"]
  [[guest.nic]]
  network = "data"
  queues = 4
[[guest]]
name = "b"
  [[guest.nic]]
  network = "data"
  queues = 2
  iommu = true
  [[guest.nic]]
  network = "data"
  queues = 1
"""

BOOT = qemu_cmd.BootFiles("minimal", Path("/img/vmlinux"), Path("/img/initrd.cpio"), None,
                          "quiet")


def params(**kw: object) -> qemu_cmd.LaunchParams:
    base = dict(qemu="qemu-system-x86_64", accel="tcg", qmp_fd=7,
                console_sock=Path("/s/con.sock"), console_log=Path("/s/con.log"),
                ssh_port=2222, pubkey="ssh-ed25519 AAAA test", firmware=None)
    base.update(kw)
    return qemu_cmd.LaunchParams(**base)  # type: ignore[arg-type]


def test_plan_is_deterministic_and_unique() -> None:
    p1 = plan.make_plan(config.parse(SPEC))
    p2 = plan.make_plan(config.parse(SPEC))
    assert p1 == p2
    nics = [n for g in p1.guests for n in g.nics]
    assert len({n.tap for n in nics}) == len({n.mac for n in nics}) == len(nics) == 3
    assert all(len(n.tap) <= 15 for n in nics)
    assert [str(n.address) for n in nics] == ["10.77.0.1/24", "10.77.0.2/24", "10.77.0.3/24"]
    other = plan.make_plan(config.parse(SPEC.replace('name = "tb"', 'name = "tb2"')))
    assert not {n.tap for n in nics} & {n.tap for g in other.guests for n in g.nics}


def test_explicit_address_is_skipped_by_auto_assignment() -> None:
    spec = SPEC.replace("queues = 4", 'queues = 4\n  address = "10.77.0.2/24"')
    addrs = [str(n.address) for g in plan.make_plan(config.parse(spec)).guests for n in g.nics]
    assert addrs == ["10.77.0.2/24", "10.77.0.1/24", "10.77.0.3/24"]
    dup = SPEC.replace("queues = 2", 'queues = 2\n  address = "10.77.0.7/24"').replace(
        "queues = 1", 'queues = 1\n  address = "10.77.0.7/24"')
    with pytest.raises(ConfigError, match="used twice"):
        plan.make_plan(config.parse(dup))


def _opt(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_argv_multiqueue_nic() -> None:
    p = plan.make_plan(config.parse(SPEC))
    argv = qemu_cmd.build_argv(p.guest("a"), BOOT, params())
    assert "-S" in argv and "tcg,thread=multi" in argv
    assert "max,+fsgsbase" in argv
    netdevs = _opt(argv, "-netdev")
    assert any("queues=4" in n and "vhost=off" in n and "script=no" in n for n in netdevs)
    dev = next(d for d in _opt(argv, "-device") if "netdev=data0" in d)
    assert "mq=on" in dev and "vectors=10" in dev and "rss=on" in dev and "bus=rp0" in dev
    assert "iommu" not in " ".join(argv)
    mgmt = next(n for n in netdevs if n.startswith("user"))
    assert "restrict=on" in mgmt and "hostfwd=tcp:127.0.0.1:2222-" in mgmt


def test_argv_iommu_guest() -> None:
    p = plan.make_plan(config.parse(SPEC))
    argv = qemu_cmd.build_argv(p.guest("b"), BOOT, params(accel="kvm"))
    devices = _opt(argv, "-device")
    iommu_at = next(i for i, d in enumerate(devices) if d.startswith("intel-iommu"))
    first_nic = next(i for i, d in enumerate(devices) if d.startswith("virtio-net"))
    assert iommu_at < first_nic
    assert "q35,kernel-irqchip=split" in argv and "kvm" in argv
    nic0 = next(d for d in devices if "netdev=data0" in d)
    nic1 = next(d for d in devices if "netdev=data1" in d)
    assert "iommu_platform=on" in nic0 and "vectors=6" in nic0
    assert "mq=off" in nic1 and "vectors=4" in nic1
    assert {"intel_iommu=on", "hugepages=8"} <= set(_opt(argv, "-append")[0].split())
    plain = qemu_cmd.build_argv(p.guest("a"), BOOT, params())
    assert "hugepages" not in _opt(plain, "-append")[0]


def test_cmdline_carries_key_and_addresses() -> None:
    import base64

    p = plan.make_plan(config.parse(SPEC))
    line = qemu_cmd.kernel_cmdline(p.guest("b"), BOOT, params())
    args = dict(a.split("=", 1) for a in line.split() if a.startswith("harness."))
    assert base64.b64decode(args["harness.key"]).decode() == "ssh-ed25519 AAAA test"
    assert args["harness.host"] == "b"
    assert args["harness.net"].count("=") == 2 and "10.77.0.3/24" in args["harness.net"]


def _two_nics(option: str) -> str:
    """A guest with two NICs on one network, the first with an extra option line."""
    return ('[[network]]\nname = "d"\n[[guest]]\nname = "a"\n  [[guest.nic]]\n'
            f'  network = "d"\n  {option}\n  [[guest.nic]]\n  network = "d"\n')


def _nic_devices(spec: str) -> list[str]:
    p = plan.make_plan(config.parse(spec))
    devices = _opt(qemu_cmd.build_argv(p.guest("a"), BOOT, params()), "-device")
    return [d for d in devices if "netdev=data" in d]


def test_argv_drop_when_full_nic() -> None:
    nics = _nic_devices(_two_nics("drop_when_full = true"))
    assert ["x-rx-drop-when-full=on" in d for d in nics] == [True, False]
    with pytest.raises(ConfigError, match=r"guest\[0\].nic\[0\].drop_when_full: expected true"):
        config.parse(_two_nics('drop_when_full = "yes"'))


def test_argv_rx_ring_size() -> None:
    nics = _nic_devices(_two_nics("rx_ring_size = 1024"))
    assert ["rx_queue_size=1024" in d for d in nics] == [True, False]
    assert not any("rx_queue_size" in d for d in _nic_devices(_two_nics("rx_ring_size = 256")))
    for bad in ("300", "128", "true", '"1024"'):
        with pytest.raises(ConfigError, match=r"guest\[0\].nic\[0\].rx_ring_size: expected one "
                                              r"of 256, 512, 1024"):
            config.parse(_two_nics(f"rx_ring_size = {bad}"))
