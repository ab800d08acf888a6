"""``harness doctor``: what this host can do, each check with a fix when it fails.

Read-only except for throwaway probes (a QEMU run per accelerator, a dummy link in
a temporary namespace) that clean up after themselves.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from harness import host, images, net
from harness.errors import HarnessError
from harness.features import NEEDS_PROJECT_QEMU, feature_names
from harness.paths import cache_root, state_root


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks() -> list[Check]:
    checks: list[Check] = []
    try:
        qemu = host.qemu_binary()
    except HarnessError as exc:
        return [Check("qemu", False, str(exc), "scripts/setup")]
    checks.append(Check("qemu", True, f"{qemu} {host.qemu_version(qemu)}"))
    tcg = host.probe_accel(qemu, "tcg")
    checks.append(Check("accel tcg", tcg.works, tcg.detail,
                        "" if tcg.works else "reinstall qemu-system-x86"))
    checks.append(_kvm(qemu))
    flags = host.cpu_flags(qemu)
    for f in feature_names():
        ok = f in flags
        fix = ("the project's QEMU has it: see 'qemu for uintr'" if f in NEEDS_PROJECT_QEMU
               else "see 'harness' README: CPU features")
        checks.append(Check(f"cpu feature {f}", ok, "offered by -cpu" if ok else
                            "unknown to this QEMU", "" if ok else fix))
    checks.append(_project_qemu())
    fw = host.firmware()
    checks.append(Check("qboot firmware", fw is not None, str(fw or "missing"),
                        "" if fw else "install qemu-system-data (boots ~2x slower without)"))
    root = os.geteuid() == 0
    checks.append(Check("privileges", root, "root" if root else f"uid {os.geteuid()}",
                        "" if root else "run as root (taps, namespaces need CAP_NET_ADMIN)"))
    if root:
        for kind in ("tbf", "netem"):
            ok = net.qdisc_supported(kind)
            checks.append(Check(f"qdisc {kind}", ok, "works in a namespace" if ok else
                                "not available in this host kernel",
                                "" if ok else f"modprobe sch_{kind}; without it spec "
                                f"{'rate_mbit' if kind == 'tbf' else 'delay_ms/loss_pct'} "
                                "cannot be used"))
        tun = os.path.exists("/dev/net/tun")
        checks.append(Check("tun/tap", tun, "/dev/net/tun" if tun else "missing",
                            "" if tun else "modprobe tun"))
    for tool, pkg in (("dropbearkey", "dropbear-bin"), ("depmod", "kmod"),
                      ("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs"),
                      ("ssh", "openssh-client")):
        path = shutil.which(tool)
        checks.append(Check(f"tool {tool}", path is not None, path or "missing",
                            "" if path else f"apt-get install {pkg}"))
    built = {i.flavor: i for i in images.list_images()}
    for flavor in images.FLAVORS:
        img = built.get(flavor)
        checks.append(Check(f"image {flavor}", img is not None,
                            str(img.path) if img else "not built",
                            "" if img else f"harness image build {flavor}"))
    cache = cache_root()
    cache.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(cache).free / 2**30
    checks.append(Check("disk space", free > 5, f"{free:.1f} GiB free in {cache}",
                        "" if free > 5 else "free space: the full image needs ~3 GiB"))
    checks.append(Check("state dir", True, str(state_root())))
    return checks


def _kvm(qemu: str) -> Check:
    """KVM in one of its states: absent, refusing, present but unable to boot Linux,
    or booting the guests' kernel (the only state in which guests use it)."""
    reset = host.probe_accel(qemu, "kvm")
    fallback = "guests use TCG instead (slower, fully supported)"
    if not reset.works:
        return Check("accel kvm", False, reset.detail, fallback)
    built = {i.flavor: i for i in images.list_images()}
    img = built.get("minimal") or next(iter(built.values()), None)
    if img is None:
        return Check("accel kvm", False, "runs guest code; Linux boot not probed yet (no "
                     "image built)", "harness image build minimal, then doctor again")
    linux = host.probe_kvm_linux(qemu, img.boot.kernel)
    return Check("accel kvm", linux.works, linux.detail, "" if linux.works else fallback)


def _project_qemu() -> Check:
    """The patched QEMU used for guests that ask for uintr."""
    from harness import qemu_build

    try:
        build = qemu_build.current()
    except HarnessError as exc:
        return Check("qemu for uintr", False, str(exc), "harness qemu build")
    if build is None:
        return Check("qemu for uintr", False, "not built (guests asking for uintr cannot start)",
                     "harness qemu build (about 10 minutes the first time)")
    return Check("qemu for uintr", True, f"{build.binary} ({build.manifest.get('version')}, "
                 f"{len(build.manifest.get('patches', []))} patches)")
