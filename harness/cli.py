"""The ``harness`` command line: parse arguments, call the library, render results.

This is the only place that turns exceptions into one-line messages and exit
codes, installs logging handlers and draws progress. SIGTERM is treated like
Ctrl-C so every path runs the same cleanup.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import socket
import sys
import termios
import traceback
import tty
from pathlib import Path
from typing import NoReturn

from rich.logging import RichHandler

from harness import __version__, cleanup, config, images, state
from harness.config import ACCELS
from harness.errors import ConfigError, HarnessError
from harness.output import Output
from harness.testbed import Testbed, require_root

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"harness: error: {message} (see 'harness --help')\n")


def _global_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """--json, -v and --accel, accepted before the command and after it (as users type
    them); after the command they only count when given (SUPPRESS keeps the first)."""
    d: dict[str, object] = {} if defaults else {"default": argparse.SUPPRESS}
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout",
                   **d)
    p.add_argument("-v", "--verbose", action="store_true", help="log what the harness does",
                   **d)
    p.add_argument("--accel", choices=ACCELS, help="accelerator for every guest started "
                   "(overrides HARNESS_ACCEL and the spec's accel)",
                   **({"default": None} if defaults else d))


class _SubParser(_Parser):
    """A subcommand's parser: knows the global options too."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        if self.prog.count(" ") == 1:  # 'harness CMD', not deeper levels
            _global_options(self, defaults=False)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="QEMU testbeds for kernel-bypass research.")
    p.add_argument("--version", action="version", version=f"harness {__version__}")
    _global_options(p, defaults=True)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_SubParser)

    up = sub.add_parser("up", help="start a testbed from a TOML spec and leave it running")
    up.add_argument("spec", nargs="?", type=Path, help="spec file (default: the demo spec)")
    up.add_argument("--no-verify", action="store_true",
                    help="skip the in-guest CPU feature and NIC queue checks")

    down = sub.add_parser("down", help="stop a testbed and remove everything it made")
    down.add_argument("testbed", nargs="?", help="testbed name (default: the only one up)")
    down.add_argument("--all", action="store_true", help="every testbed")

    st = sub.add_parser("status", help="testbeds, guests and their state")
    st.add_argument("testbed", nargs="?")

    for name, hlp in (("ssh", "interactive SSH session to a guest"),
                      ("console", "attach to a guest's serial console (Ctrl-] leaves)")):
        s = sub.add_parser(name, help=hlp)
        s.add_argument("guest")
        s.add_argument("-t", "--testbed")

    ex = sub.add_parser("exec", help="run a command in a guest (or all) and print its output")
    ex.add_argument("guest", nargs="?", help="guest name (or --all)")
    ex.add_argument("-t", "--testbed")
    ex.add_argument("--all", action="store_true", help="run on every guest in parallel")
    ex.add_argument("--timeout", type=float, default=300.0)
    ex.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ...")

    im = sub.add_parser("image", help="build, list or clean guest images")
    isub = im.add_subparsers(dest="image_cmd", required=True, parser_class=_Parser)
    ib = isub.add_parser("build", help="build images whose inputs changed")
    ib.add_argument("flavors", nargs="*", metavar="FLAVOR",
                    help=f"{' or '.join(images.FLAVORS)} (default: minimal)")
    ib.add_argument("--force", action="store_true", help="rebuild even when cached")
    isub.add_parser("list", help="cached images")
    ic = isub.add_parser("clean", help="remove cached images")
    ic.add_argument("--stale", action="store_true", help="keep the current images")

    qm = sub.add_parser("qemu", help="the project's patched QEMU (user interrupts)")
    qsub = qm.add_subparsers(dest="qemu_cmd", required=True, parser_class=_Parser)
    qb = qsub.add_parser("build", help="fetch Debian's QEMU source, patch, build (cached)")
    qb.add_argument("--force", action="store_true", help="rebuild even when cached")
    qsub.add_parser("status", help="source version, patches, cached builds")
    qc = qsub.add_parser("clean", help="remove cached builds and the build folder")
    qc.add_argument("--stale", action="store_true", help="keep the current build")

    sub.add_parser("doctor", help="what this host can do, with fixes")
    sub.add_parser("demo", help="boot two guests, show them exchanging traffic, tear down")

    gc = sub.add_parser("gc", help="remove what crashed harness runs left behind")
    gc.add_argument("--all", action="store_true", help="also remove running testbeds")

    be = sub.add_parser("bench", help="benchmarks")
    bsub = be.add_subparsers(dest="bench_cmd", required=True, parser_class=_Parser)
    bb = bsub.add_parser("boot", help="boot time, SSH round trip, memory, parallel boot")
    bb.add_argument("--runs", type=int, default=5, help="runs per figure (default 5)")
    bb.add_argument("--parallel", type=int, default=8, help="guests in the parallel run")
    bb.add_argument("--image", default="minimal", choices=images.FLAVORS)
    be_echo = bsub.add_parser("udp-echo", help="kernel UDP sockets vs the bypass path")
    be_echo.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    be_idle = bsub.add_parser("idle", help="CPU of an idle instance, polling vs armed")
    be_idle.add_argument("--seconds", type=float, default=5.0)
    be_mem = bsub.add_parser("rx-memory", help="smallest pinned RX memory: fixed vs pool")
    be_mem.add_argument("--rate", type=int, default=1500, help="offered requests/s")
    be_mem.add_argument("--seconds", type=float, default=3.0, help="per configuration")
    be_mem.add_argument("--burst", type=int, default=32,
                        help="requests sent back to back, same average rate (default 32)")
    be_mem.add_argument("--nic-fifo", type=int, default=0,
                        help="frames the server's tap may queue (default 0: leave it at 1000)")

    be_ui = bsub.add_parser("uintr", help="user interrupts vs signals vs eventfd")
    be_ui.add_argument("--iters", type=int, default=20000, help="round trips per mechanism")
    be_ui.add_argument("--vcpus", type=int, default=2, help="guest vCPUs (2 to 8)")

    stats = sub.add_parser("stats", help="counters of the bypass echo server in a guest")
    stats.add_argument("guest")
    stats.add_argument("-t", "--testbed")

    nic = sub.add_parser("nic", help="hand a data NIC to a user-space driver or back")
    nic.add_argument("guest")
    nic.add_argument("index", type=int, help="data NIC number (data0 is 0)")
    nic.add_argument("driver", choices=["vfio", "kernel"])
    nic.add_argument("-t", "--testbed")
    return p


# --- commands ------------------------------------------------------------------------

def _pick_testbed(name: str | None) -> str:
    if name:
        return name
    names = [s.name for s in state.all_states() if s.meta]
    if len(names) == 1:
        return names[0]
    if not names:
        raise HarnessError("no testbed is up; start one with 'harness up [SPEC]'")
    raise ConfigError(f"several testbeds are up ({', '.join(names)}); name one with -t NAME")


def cmd_up(args: argparse.Namespace, out: Output) -> int:
    require_root()
    from harness.demo import demo_config

    cfg = config.load(args.spec) if args.spec else demo_config()
    with out.progress() as prog:
        tb = Testbed.up(cfg, progress=prog, verify=not args.no_verify)
    try:
        _show_testbed(tb, out)
    finally:
        tb.detach()
    out.line(f"testbed '{tb.name}' is up; 'harness exec GUEST -- CMD', "
             f"'harness down {tb.name}' when done")
    return 0


def _show_testbed(tb: Testbed, out: Output) -> None:
    rows = []
    for g in tb:
        ready = g.timings.get("ready", 0) - g.timings.get("launch", 0)
        feats = ",".join(r.name for r in g.feature_reports if r.ok) or "-"
        nics = " ".join(f"{n.name}:{n.rx_queues}q/{n.msix_rx + n.msix_tx}vec"
                        for n in g.nic_reports) or "-"
        addrs = " ".join(str(n.address) for n in g.plan.nics) or "-"
        rows.append([g.name, g.image.flavor if g.image else "", tb.accel,
                     f"127.0.0.1:{g.ssh_port}", round(ready, 2), feats, nics, addrs])
    out.table("guests", f"testbed {tb.name} (namespace {tb.netns})",
              ["guest", "image", "accel", "ssh", "ready_s", "features", "data_nics",
               "addresses"], rows)


def cmd_down(args: argparse.Namespace, out: Output) -> int:
    require_root()
    names = [s.name for s in state.all_states()] if args.all else [_pick_testbed(args.testbed)]
    rows = []
    failed: list[str] = []
    for name in names:
        try:
            tb = Testbed.attach(name)
            removed = tb.down()
            rows.append([name, len(tb.guests), len(removed.processes), len(removed.links),
                         len(removed.namespaces), len(removed.dirs), "removed"])
        except HarnessError as exc:
            if not args.all:
                raise
            # one broken state folder must not keep the others running
            removed = cleanup.teardown(state.find(name))
            failed.append(name)
            rows.append([name, "-", len(removed.processes), len(removed.links),
                         len(removed.namespaces), len(removed.dirs), f"broken: {exc}"])
    out.table("removed", "removed", ["testbed", "guests", "killed", "taps", "namespaces",
                                     "dirs", "result"], rows)
    return EXIT_ERROR if failed else 0


def cmd_status(args: argparse.Namespace, out: Output) -> int:
    states = [state.find(args.testbed)] if args.testbed else state.all_states()
    rows = []
    for st in states:
        if not st.meta:
            rows.append([st.name, "-", "-", "-", "-", "broken (run 'harness gc')"])
            continue
        tb = Testbed.attach(st.name)
        rows += _status_rows(st, tb)
        tb.disconnect()
    out.table("testbeds", "testbeds", ["testbed", "guest", "pid", "ssh", "process", "state"],
              rows)
    if not rows:
        out.line("no testbed is up")
    return 0


def _status_rows(st: state.TestbedState, tb: Testbed) -> list[list[object]]:
    rows: list[list[object]] = []
    for g in tb:
        alive = g.alive()
        status = "-"
        if alive:
            try:
                status = g.status()
            except HarnessError as exc:
                status = f"QMP busy ({exc.__class__.__name__})"
        owner = "detached" if st.detached else \
            ("owned" if st.owner_alive() else "abandoned (run 'harness gc')")
        rows.append([st.name, g.name, g.pid, f"127.0.0.1:{g.ssh_port}",
                     "running" if alive else "dead", f"{status}; {owner}"])
    return rows


def _exec_options(args: argparse.Namespace) -> list[str]:
    """The command after '--'; options written between the guest and '--' (as in
    'exec GUEST -t NAME -- CMD') are applied, not taken for the command."""
    rest = list(args.command)
    if "--" in rest:
        opts, command = rest[:rest.index("--")], rest[rest.index("--") + 1:]
        extra = _Parser(prog="harness exec", add_help=False)
        extra.add_argument("-t", "--testbed")
        extra.add_argument("--all", action="store_true")
        extra.add_argument("--timeout", type=float)
        more, unknown = extra.parse_known_args(opts)
        if unknown:
            raise ConfigError(f"exec: unknown option {unknown[0]!r} before '--'")
        args.testbed = more.testbed or args.testbed
        args.all = more.all or args.all
        args.timeout = more.timeout or args.timeout
        return command
    return rest


def cmd_exec(args: argparse.Namespace, out: Output) -> int:
    command = _exec_options(args)
    if args.all and args.guest:  # 'exec --all -- CMD': argparse took CMD's first word
        command = [args.guest, *command]
    if not command:
        raise ConfigError("exec: no command given; write 'harness exec GUEST -- CMD ...'")
    tb = Testbed.attach(_pick_testbed(args.testbed))
    try:
        return _exec(tb, args, " ".join(command), out)
    finally:
        tb.disconnect()


def _exec(tb: Testbed, args: argparse.Namespace, line: str, out: Output) -> int:
    if args.all:
        results = tb.run_all(line, timeout=args.timeout)
    else:
        if not args.guest:
            raise ConfigError("exec: name a guest or use --all")
        g = tb.guest(args.guest)
        if out.json_mode:
            results = {g.name: g.run(line, timeout=args.timeout)}
        else:
            res = g.run(line, timeout=args.timeout,
                        on_stdout=lambda s: print(s, flush=True),
                        on_stderr=lambda s: print(s, file=sys.stderr, flush=True))
            return res.exit_code
    for name, r in sorted(results.items()):
        if not out.json_mode:
            for ln in r.stdout.splitlines():
                print(f"{name}: {ln}")
            for ln in r.stderr.splitlines():
                print(f"{name}: {ln}", file=sys.stderr)
    out.data("results", {n: {"exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr}
                         for n, r in results.items()})
    return max((r.exit_code for r in results.values()), default=0)


def cmd_ssh(args: argparse.Namespace, out: Output) -> int:
    tb = Testbed.attach(_pick_testbed(args.testbed))
    g = tb.guest(args.guest)
    known = tb.state.dir / "known_hosts"
    known.write_text(f"[127.0.0.1]:{g.ssh_port} {g.host_key}\n")
    argv = ["ssh", "-i", str(g.key_file), "-p", str(g.ssh_port), "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "StrictHostKeyChecking=yes",
            "root@127.0.0.1"]
    try:
        os.execvp("ssh", argv)
    except FileNotFoundError as exc:
        raise HarnessError("ssh is not installed; install openssh-client") from exc
    return 0


def cmd_console(args: argparse.Namespace, out: Output) -> int:
    tb = Testbed.attach(_pick_testbed(args.testbed))
    g = tb.guest(args.guest)
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.connect(str(g.files.console_sock))
    except OSError as exc:
        raise HarnessError(f"{g.name}: cannot attach to the console at "
                           f"{g.files.console_sock}: {exc.strerror}") from exc
    print(f"[attached to {g.name}'s console; Ctrl-] leaves]", file=sys.stderr)
    stdin = sys.stdin.fileno()
    old = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    watch = [sock, stdin]
    try:
        if old is not None:
            tty.setraw(stdin)
        sock.sendall(b"\n")
        while True:
            # once piped input is used up, show what the guest still prints, then leave
            ready, _, _ = select.select(watch, [], [], None if stdin in watch else 1.0)
            if not ready:
                break
            if sock in ready:
                data = sock.recv(4096)
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if stdin in ready:
                data = os.read(stdin, 1024)
                if b"\x1d" in data:
                    break
                if not data:
                    watch.remove(stdin)
                    continue
                sock.sendall(data)
    finally:
        if old is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, old)
        sock.close()
    print("\n[detached]", file=sys.stderr)
    return 0


def cmd_image(args: argparse.Namespace, out: Output) -> int:
    if args.image_cmd == "build":
        rows = []
        with out.progress() as prog:
            for flavor in args.flavors or ["minimal"]:
                img = images.get(flavor, force=args.force, progress=prog)
                rows.append(_image_row(img))
        out.table("images", "images", ["flavor", "digest", "kernel", "size_mib", "built", "path"],
                  rows)
    elif args.image_cmd == "list":
        rows = [_image_row(i) for i in images.list_images()]
        out.table("images", "cached images",
                  ["flavor", "digest", "kernel", "size_mib", "built", "path"], rows)
        if not rows:
            out.line("no images cached; 'harness image build [minimal|full]'")
    else:
        removed = images.clean(keep_current=args.stale)
        out.table("removed", "removed", ["path"], [[str(p)] for p in removed])
    return 0


def cmd_qemu(args: argparse.Namespace, out: Output) -> int:
    from harness import qemu_build

    if args.qemu_cmd == "build":
        with out.progress() as prog:
            b = qemu_build.build(force=args.force, progress=prog)
        out.table("qemu", "patched QEMU", ["key", "version", "patches", "build_s", "binary"],
                  [[b.key, b.manifest.get("version"), len(b.manifest.get("patches", [])),
                    b.manifest.get("build_s"), str(b.binary)]])
    elif args.qemu_cmd == "status":
        recipe = qemu_build.load_recipe()
        version = qemu_build.source_version(recipe)
        key = qemu_build.build_key(version, recipe) if version else None
        builds = qemu_build.list_builds()
        out.table("qemu", "patched QEMU", ["item", "value"], [
            ["source", f"{recipe.source} {version or '(no deb-src entry yet)'}"],
            ["patches", ", ".join(p.name for p in recipe.patches) or "none"],
            ["current key", key or "-"],
            ["current build", next((str(b.binary) for b in builds if b.key == key),
                                   "not built: 'harness qemu build'")],
            ["missing build deps", " ".join(qemu_build.missing_build_deps(recipe)) or "none"],
        ])
        out.table("builds", "cached builds", ["key", "version", "built", "build_s", "binary"],
                  [[b.key, b.manifest.get("version"), b.manifest.get("built"),
                    b.manifest.get("build_s"), str(b.binary)] for b in builds])
    else:
        removed = qemu_build.clean(keep_current=args.stale)
        out.table("removed", "removed", ["path"], [[str(p)] for p in removed])
    return 0


def _image_row(img: images.Image) -> list[object]:
    size = sum(p.stat().st_size for p in img.path.iterdir() if p.is_file()) / 2**20
    return [img.flavor, img.digest, img.manifest.get("kernel"), round(size),
            img.manifest.get("built"), str(img.path)]


def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    from harness.doctor import run_checks

    with out.progress() as prog:
        prog.step("probing QEMU, accelerators, namespaces")
        checks = run_checks()
    out.table("checks", "harness doctor", ["check", "ok", "detail", "fix"],
              [[c.name, c.ok, c.detail, c.fix] for c in checks])
    essential = {"qemu", "accel tcg", "privileges", "tun/tap"}
    return 0 if all(c.ok for c in checks if c.name in essential) else EXIT_ERROR


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    require_root()
    from harness.demo import run_demo

    with out.progress() as prog:
        tb, tr = run_demo(prog)
    try:
        _show_testbed(tb, out)
        out.table("traffic", "traffic a -> b over data0 (kernel stack, namespace bridge)",
                  ["ping_sent", "ping_received", "rtt_avg_ms", "tcp_mbit_s", "b_rx_queues_used"],
                  [[tr.sent, tr.received, tr.rtt_avg_ms, round(tr.tcp_mbit, 1),
                    tr.rx_queues_used]])
    except BaseException as exc:
        tb.down(error=exc)
        raise
    removed = tb.down()
    out.line(f"torn down: {len(tb.guests)} guests, {len(removed.links)} taps, "
             f"{len(removed.namespaces)} namespace")
    return 0 if tr.received == tr.sent else EXIT_ERROR


def cmd_gc(args: argparse.Namespace, out: Output) -> int:
    require_root()
    removed = cleanup.gc(everything=args.all)
    out.table("removed", "gc", ["processes", "taps", "namespaces", "dirs"],
              [[len(removed.processes), len(removed.links), len(removed.namespaces),
                len(removed.dirs)]])
    return 0


def cmd_bench(args: argparse.Namespace, out: Output) -> int:
    require_root()
    if args.bench_cmd == "uintr":
        return _bench_uintr(args, out)
    if args.bench_cmd != "boot":
        return _bench_bypass(args, out)
    from harness.bench import bench_boot

    if not 1 <= args.runs <= 100:
        raise ConfigError("--runs: use 1 to 100")
    if not 0 <= args.parallel <= 32:
        raise ConfigError("--parallel: use 0 (skip) to 32")
    with out.progress() as prog:
        metrics = bench_boot(args.runs, args.parallel, args.image, prog)
    out.table("metrics", f"bench boot ({args.image} image, {args.runs} runs)",
              ["metric", "median", "min", "max", "unit", "target", "meets"],
              [[m.label, round(m.summary.median, 3), round(m.summary.low, 3),
                round(m.summary.high, 3), m.unit, m.target, m.meets] for m in metrics])
    return 0


def _bench_uintr(args: argparse.Namespace, out: Output) -> int:
    from harness.bench_uintr import bench_uintr

    if not 100 <= args.iters <= 10_000_000:
        raise ConfigError("--iters: use 100 to 10000000")
    if not 2 <= args.vcpus <= 8:
        raise ConfigError("--vcpus: use 2 to 8 (sender and receiver on different vCPUs)")
    with out.progress() as prog:
        res = bench_uintr(args.iters, args.vcpus, progress=prog)
    out.table("mechanisms", f"bench uintr ({res.iterations} round trips, {res.vcpus} vCPUs, "
              "sender and receiver on different vCPUs)",
              ["mechanism", "oneway_p50_ns", "oneway_p99_ns", "roundtrip_p50_ns",
               "roundtrips_s", "error"],
              [[m.name, m.oneway_p50_ns, m.oneway_p99_ns, m.roundtrip_p50_ns, m.roundtrips_s,
                m.error or None] for m in res.mechanisms])
    out.table("ratios", "ratios", ["ratio", "value"], [[k, v] for k, v in res.ratios.items()])
    return 0


def _bench_bypass(args: argparse.Namespace, out: Output) -> int:
    from harness import bench_bypass as bb

    if not 0.5 <= args.seconds <= 600:
        raise ConfigError("--seconds: use 0.5 to 600")
    with out.progress() as prog:
        if args.bench_cmd == "udp-echo":
            rows = bb.bench_udp_echo(args.seconds, progress=prog)
            out.table("results", "bench udp-echo (closed loop, window 8, 32 flows, 64 B)",
                      ["path", "queues", "requests_s", "p50_us", "p99_us", "loss_pct"],
                      [[r.path, r.queues, round(r.rps), r.p50_us, r.p99_us,
                        round(r.loss_pct, 3)] for r in rows])
            by = {(r.path, r.queues): r for r in rows}
            ratios = []
            for path in ("bypass", "bypass-armed"):
                for q in (1, 4):
                    k, b = by[("kernel", q)], by[(path, q)]
                    ratios.append([path, q, round(b.rps / k.rps, 2) if k.rps else None,
                                   round(b.p50_us / k.p50_us, 2)
                                   if b.p50_us and k.p50_us else None,
                                   round(b.p99_us / k.p99_us, 2)
                                   if b.p99_us and k.p99_us else None])
            out.table("ratios", "bypass / kernel",
                      ["path", "queues", "requests_s", "p50", "p99"], ratios)
            ref, ours = by[("dpdk-testpmd", 1)], by[("bypass", 1)]
            out.table("reference", "bypass / dpdk-testpmd (1 queue pair, goal >= 0.8)",
                      ["requests_s_ratio"],
                      [[round(ours.rps / ref.rps, 2) if ref.rps else None]])
        elif args.bench_cmd == "idle":
            rows_i = bb.bench_idle(args.seconds, progress=prog)
            out.table("results", "bench idle (1 queue pair)",
                      ["mode", "idle_cpu_pct_of_vcpu", "p50_us_at_20_rps", "p99_us_at_20_rps"],
                      [[r.mode, round(r.idle_cpu_pct, 2), r.p50_us, r.p99_us] for r in rows_i])
        else:
            if not 10 <= args.rate <= 100000:
                raise ConfigError("--rate: use 10 to 100000 requests/s")
            if not 1 <= args.burst <= 1024:
                raise ConfigError("--burst: use 1 to 1024 requests")
            if not 0 <= args.nic_fifo <= 10000:
                raise ConfigError("--nic-fifo: use 0 (leave the tap alone) to 10000 frames")
            rows_m = bb.bench_rx_memory(args.rate, args.seconds, burst=args.burst,
                                        nic_fifo=args.nic_fifo, progress=prog)
            out.table("results", f"bench rx-memory (offered {args.rate} requests/s in bursts "
                      f"of {args.burst}, tap queue {args.nic_fifo or 1000} frames, "
                      "loss < 0.1%, 2 queue pairs)",
                      ["skew", "size", "scheme", "smallest", "pinned_kib", "loss_pct"],
                      [[r.skew, r.size, r.scheme, r.setting, r.pinned_kib,
                        round(r.loss_pct, 3)] for r in rows_m])
            ratio_rows = []
            for skew in ("uniform", "skewed"):
                for size in (64, 1400):
                    f = next(r for r in rows_m if (r.skew, r.size, r.scheme) ==
                             (skew, size, "fixed"))
                    p = next(r for r in rows_m if (r.skew, r.size, r.scheme) ==
                             (skew, size, "pool"))
                    ratio_rows.append([skew, size, round(f.pinned_kib / p.pinned_kib, 2)
                                       if f.pinned_kib and p.pinned_kib else None])
            out.table("ratios", "pinned memory, fixed / pool", ["skew", "size", "ratio"],
                      ratio_rows)
    return 0


def cmd_stats(args: argparse.Namespace, out: Output) -> int:
    from harness.bypass import STATS

    tb = Testbed.attach(_pick_testbed(args.testbed))
    try:
        res = tb.guest(args.guest).run(f"cat {STATS}")
    finally:
        tb.disconnect()
    if not res.ok:
        raise HarnessError(f"{args.guest}: no udp_echo counters at {STATS}; start the bypass "
                           "echo server first (harness.bypass.EchoServer)")
    try:
        st = json.loads(res.stdout)
    except ValueError as exc:
        raise HarnessError(f"{args.guest}: unreadable counters in {STATS}") from exc
    dev = st["device"]
    qcols = ["rx_packets", "rx_bytes", "rx_errors", "tx_packets", "posted", "consumed",
             "drops_nobuf", "share", "wakeups", "rx_bad_used", "tx_bad_used", "rx_broken",
             "tx_broken"]
    out.table("queues", f"{args.guest}: udp_echo ({st['scheme']} buffers, {st['mode']} mode, "
              f"link {'up' if dev['link_up'] else 'down'}, accounting {st['check']})",
              ["queue", *qcols], [[i, *[q[c] for c in qcols]] for i, q in
                                  enumerate(dev["queues"])])
    pool = dev["pool"]
    out.table("pool", "receive buffers", list(pool), [list(pool.values())])
    out.table("stack", "network stack", ["counter", "value"],
              [[k, v] for k, v in st["stack"].items() if v])
    return 0


def cmd_nic(args: argparse.Namespace, out: Output) -> int:
    tb = Testbed.attach(_pick_testbed(args.testbed))
    try:
        g = tb.guest(args.guest)
        bdf = g.bind_nic(args.index, "vfio-pci" if args.driver == "vfio" else "virtio-pci")
    finally:
        tb.disconnect()
    out.table("nic", "nic", ["guest", "nic", "pci", "driver"],
              [[args.guest, args.index, bdf, "vfio-pci" if args.driver == "vfio" else
                "virtio-pci"]])
    return 0


COMMANDS = {"up": cmd_up, "down": cmd_down, "status": cmd_status, "exec": cmd_exec,
            "ssh": cmd_ssh, "console": cmd_console, "image": cmd_image, "qemu": cmd_qemu,
            "doctor": cmd_doctor,
            "demo": cmd_demo, "gc": cmd_gc, "bench": cmd_bench, "nic": cmd_nic,
            "stats": cmd_stats}


def _logging(verbose: bool, out: Output) -> None:
    """-v: everything, with rich. Otherwise only the harness's own warnings, one line
    each; libraries (qemu.qmp, paramiko) stay silent, tracebacks included."""
    root = logging.getLogger()
    if verbose:
        root.setLevel(logging.DEBUG)
        root.addHandler(RichHandler(console=out.err, show_time=False, show_path=False))
        return
    root.addHandler(logging.NullHandler())  # no fallback printing for libraries
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("harness: warning: %(message)s"))
    own = logging.getLogger("harness")
    own.setLevel(logging.WARNING)
    own.addHandler(handler)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    # Ctrl-C and SIGTERM both mean "clean up and leave", whatever this process
    # inherited: a shell starting a background job without job control sets SIGINT to
    # "ignore", and Python then keeps it ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    out = Output(json_mode=args.json)
    _logging(args.verbose, out)
    if args.accel:
        os.environ["HARNESS_ACCEL"] = args.accel  # every testbed this command starts
    try:
        code = COMMANDS[args.cmd](args, out)
        out.flush()
        return code
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("harness: interrupted; what this run started was removed", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: still one line, the traceback only with -v
        if args.verbose:
            traceback.print_exc()
        print(f"harness: internal error: {type(exc).__name__}: {exc} (run with -v for "
              "the traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
