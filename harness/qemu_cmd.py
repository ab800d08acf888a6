"""Build the QEMU command line for one guest: a pure function of plan + launch params.

Nothing here runs QEMU. Every device and option the testbed relies on is decided
here so that a unit test can read the whole command; the guest module only
executes the list this returns (never through a shell).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from harness.config import RX_RING_SIZES
from harness.plan import GuestPlan

MGMT_GUEST_IP = "10.0.2.15"  # QEMU user networking's default guest address
# 2 MiB pages reserved in guests with an IOMMU NIC: 16 MiB, room for 16 queue pairs'
# rings of 1024 entries and their TX slots
IOMMU_GUEST_HUGEPAGES = 8


@dataclass(frozen=True)
class BootFiles:
    """What an image gives QEMU to boot."""

    flavor: str
    kernel: Path  # uncompressed ELF vmlinux (boots through PVH, skipping decompression)
    initrd: Path
    rootfs: Path | None  # ext4 disk image for the 'full' flavor
    cmdline: str  # image-specific kernel arguments


@dataclass(frozen=True)
class LaunchParams:
    qemu: str
    accel: str  # "tcg" or "kvm" (already probed)
    qmp_fd: int  # listening socket inherited by QEMU
    console_sock: Path
    console_log: Path
    ssh_port: int
    pubkey: str  # one authorized_keys line
    firmware: Path | None  # qboot.rom when available, else SeaBIOS default


def kernel_cmdline(guest: GuestPlan, boot: BootFiles, params: LaunchParams) -> str:
    """Arguments the guest's init reads: hostname, SSH key and data NIC addresses."""
    args = [boot.cmdline, "console=ttyS0", "panic=0", f"harness.host={guest.name}",
            "harness.key=" + base64.b64encode(params.pubkey.encode()).decode()]
    nets = ",".join(f"{n.mac}={n.address}" for n in guest.nics)
    if nets:
        args.append(f"harness.net={nets}")
    if guest.config.iommu:
        # huge pages for the bypass driver's rings: over 256 entries, stock QEMU needs
        # them contiguous past 4 KiB (PAGE_RING in guest/libos/net/vnet.c)
        args += ["intel_iommu=on", "iommu=pt", f"hugepages={IOMMU_GUEST_HUGEPAGES}"]
    return " ".join(a for a in args if a)


def root_port(nic_index: int) -> str:
    return f"rp{nic_index}"


def cpu_model(guest: GuestPlan) -> str:
    return ",".join(["max"] + [f"+{f}" for f in guest.config.cpu_features])


def build_argv(guest: GuestPlan, boot: BootFiles, params: LaunchParams) -> list[str]:
    g = guest.config
    accel = "tcg,thread=multi" if params.accel == "tcg" else "kvm"
    machine = "q35,kernel-irqchip=split" if g.iommu else "q35"
    argv = [
        params.qemu,
        "-name", f"guest={g.name},debug-threads=on",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-S",  # the harness wires the taps into the namespace, then sends 'cont'
        "-machine", machine, "-accel", accel, "-cpu", cpu_model(guest),
        "-smp", str(g.vcpus), "-m", f"{g.memory_mb}M",
        "-chardev", f"socket,id=qmp,fd={params.qmp_fd},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-chardev", (f"socket,id=con0,path={params.console_sock},server=on,wait=off,"
                     f"logfile={params.console_log},logappend=on"),
        "-serial", "chardev:con0",
        "-device", "pvpanic-pci",  # the guest reports panics: QMP GUEST_PANICKED
    ]
    if params.firmware is not None:
        argv += ["-bios", str(params.firmware)]
    if g.iommu:
        # must precede every PCI device it translates for
        argv += ["-device", "intel-iommu,intremap=on,device-iotlb=on,caching-mode=on"]
    argv += [
        "-kernel", str(boot.kernel), "-initrd", str(boot.initrd),
        "-append", kernel_cmdline(guest, boot, params),
        # management NIC: SSH only, on 127.0.0.1; restrict=on keeps the guest off the host
        "-netdev", (f"user,id=mgmt,restrict=on,"
                    f"hostfwd=tcp:127.0.0.1:{params.ssh_port}-{MGMT_GUEST_IP}:22"),
        "-device", "virtio-net-pci,netdev=mgmt,id=mgmt0,mac=52:54:00:12:34:56,romfile=",
    ]
    if boot.rootfs is not None:
        argv += ["-drive", f"file={boot.rootfs},if=virtio,format=raw,snapshot=on,cache=unsafe"]
    for n in guest.nics:
        # each data NIC sits behind its own PCIe root port so it can be hot-unplugged
        argv += ["-device", (f"pcie-root-port,id={root_port(n.index)},chassis={n.index + 1},"
                             f"slot={n.index + 1}")]
        argv += ["-netdev", (f"tap,id={n.netdev_id},ifname={n.tap},script=no,downscript=no,"
                             f"queues={n.queues},vhost=off")]
        dev = (f"virtio-net-pci,netdev={n.netdev_id},id={n.device_id},mac={n.mac},"
               f"bus={root_port(n.index)},"
               f"mq={'on' if n.queues > 1 else 'off'},vectors={n.vectors},"
               "rss=on,disable-legacy=on,romfile=")  # no option ROM: we boot by -kernel
        if n.config.iommu:
            dev += ",iommu_platform=on,ats=on"
        if n.config.drop_when_full:
            dev += ",x-rx-drop-when-full=on"
        if n.config.rx_ring_size != RX_RING_SIZES[0]:
            dev += f",rx_queue_size={n.config.rx_ring_size}"
        argv += ["-device", dev]
    return argv
