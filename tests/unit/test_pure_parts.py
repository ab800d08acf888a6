"""Pure helpers: feature judging, cpio, module closure, qdisc choice, ROM, stats."""

from __future__ import annotations

import io
import json
import stat

import pytest

from harness import features, host, kernel, net, stats
from harness.config import Netem
from harness.cpio import CpioWriter
from harness.errors import FeatureMissing, GuestError, ImageError

PROBE_OK = json.dumps({"vendor": "AuthenticAMD",
                       "cpuid": {"fsgsbase": True, "rdrand": True, "uintr": False},
                       "executed": {"fsgsbase": "ok", "rdrand": "ok"}})


def test_judge_accepts_working_features() -> None:
    reps = features.judge(["fsgsbase", "rdrand"], PROBE_OK, {"fsgsbase", "rdrand"}, "g")
    assert [r.ok for r in reps] == [True, True]


def test_judge_names_missing_feature_and_hint() -> None:
    with pytest.raises(FeatureMissing, match=r"'uintr'.*CPUID bit clear.*harness qemu build"):
        features.judge(["uintr"], PROBE_OK, {"fsgsbase"}, "g")


def test_judge_uintr_needs_no_cpuinfo_flag_but_must_execute() -> None:
    probe = json.loads(PROBE_OK)
    probe["cpuid"]["uintr"] = True
    probe["executed"]["uintr"] = "ok"
    assert features.judge(["uintr"], json.dumps(probe), set(), "g")[0].ok
    probe["executed"]["uintr"] = "sigill"  # CPUID says yes, CR4.UINTR is off: no module
    with pytest.raises(FeatureMissing, match=r"faulted in user space: sigill.*uintr module"):
        features.judge(["uintr"], json.dumps(probe), set(), "g")


def test_judge_catches_faulting_instruction() -> None:
    probe = json.loads(PROBE_OK)
    probe["executed"]["fsgsbase"] = "sigill"
    with pytest.raises(FeatureMissing, match="faulted in user space: sigill"):
        features.judge(["fsgsbase"], json.dumps(probe), {"fsgsbase"}, "g")


def test_judge_rejects_garbage() -> None:
    with pytest.raises(GuestError, match="unreadable"):
        features.judge(["rdrand"], "Segmentation fault", set(), "g")


def _read_cpio(data: bytes) -> dict[str, tuple[int, bytes]]:
    out, off = {}, 0
    while True:
        head = data[off:off + 110]
        assert head[:6] == b"070701"
        f = [int(head[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name = data[off + 110:off + 110 + namesize - 1].decode()
        off += 110 + namesize
        off += -off % 4
        body = data[off:off + size]
        off += size
        off += -off % 4
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_cpio_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (tmp_path / "bin/tool").chmod(0o755)
    (tmp_path / "link").symlink_to("/bin/tool")
    buf = io.BytesIO()
    w = CpioWriter(buf)
    w.tree(tmp_path)
    w.chardev("dev/console", 5, 1)
    w.close()
    entries = _read_cpio(buf.getvalue())
    assert stat.S_ISDIR(entries["bin"][0])
    assert entries["bin/tool"] == (stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n")
    assert stat.S_ISLNK(entries["link"][0]) and entries["link"][1] == b"/bin/tool"
    assert stat.S_ISCHR(entries["dev/console"][0])


def test_module_closure_follows_dependencies() -> None:
    dep = ("kernel/net/virtio_net.ko: kernel/net/net_failover.ko kernel/virtio/virtio_ring.ko\n"
           "kernel/net/net_failover.ko: kernel/net/failover.ko\n"
           "kernel/net/failover.ko:\nkernel/virtio/virtio_ring.ko:\nkernel/other.ko:\n")
    got = kernel.module_closure(dep, ["virtio-net"])
    assert got == sorted(["kernel/net/virtio_net.ko", "kernel/net/net_failover.ko",
                          "kernel/net/failover.ko", "kernel/virtio/virtio_ring.ko"])
    with pytest.raises(ImageError, match="'nope' does not exist"):
        kernel.module_closure(dep, ["nope"])


def test_extract_vmlinux_finds_xz_payload() -> None:
    import lzma

    payload = b"\x7fELF" + bytes(range(256)) * 4
    bz = b"MZ" + b"\0" * 100 + lzma.compress(payload, format=lzma.FORMAT_XZ) + b"\0" * 8
    assert kernel.extract_vmlinux(bz) == payload
    with pytest.raises(ImageError):
        kernel.extract_vmlinux(b"no stream here")


def test_tc_argv_picks_qdisc() -> None:
    assert net.tc_argv("t0", Netem(rate_mbit=10))[5:8] == ["root", "tbf", "rate"]
    a = net.tc_argv("t0", Netem(delay_ms=20, jitter_ms=5, loss_pct=1, rate_mbit=100))
    assert a[6:] == ["netem", "delay", "20ms", "5ms", "loss", "1%", "rate", "100mbit"]


def test_reset_vector_rom() -> None:
    rom = host.reset_vector_rom()
    assert len(rom) == 0x10000
    assert rom[0xFFF0:0xFFF4] == bytes([0xB0, 0x42, 0xE6, 0xF4])


def test_summarize() -> None:
    s = stats.summarize([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.low, s.high, s.runs, s.spread) == (2.5, 1.0, 10.0, 4, 9.0)


def test_missing_package_is_named() -> None:
    from harness import apt

    with pytest.raises(ImageError, match="package 'no-such-package-harness' cannot be had"):
        apt.resolve(["busybox-static", "no-such-package-harness"])
