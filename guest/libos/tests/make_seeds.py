#!/usr/bin/env python3
"""Writes the seed corpora of the two fuzz harnesses (tests/fuzz_rx.c, tests/fuzz_stack.c).

The seeds are small inputs in each harness's format (see their header comments) that
reach the interesting paths at once: well-formed ARP, ICMP echo and UDP frames to the
harness's stack (10.0.0.1, MAC 02:00:00:00:00:01), frames over several receive buffers,
and the device misbehaving in each way the receive harness can express. libFuzzer
mutates from there. The output is committed (tests/corpus/); run this again after
changing an input format:  python3 tests/make_seeds.py tests/corpus
It writes only below the directory it is given.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

OUR_MAC = bytes.fromhex("020000000001")
PEER_MAC = bytes.fromhex("020000000002")
BCAST = b"\xff" * 6
OUR_IP = bytes([10, 0, 0, 1])
PEER_IP = bytes([10, 0, 0, 2])

# fuzz_rx operations, in the order of its enum
FRAME, USED, PUBLISH, NBUFS, LEN, RX, TXDONE, TXUSED, SCRIBBLE, IDX = range(10)
POOL, RING16 = 0x01, 0x02  # configuration byte: pool scheme, 8 << 1 ring entries


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(proto: int, payload: bytes, frag: int = 0x4000) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, frag, 64, proto, 0,
                      PEER_IP, OUR_IP)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return OUR_MAC + PEER_MAC + b"\x08\x00" + hdr + payload


def arp_request() -> bytes:
    body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, PEER_MAC, PEER_IP, b"\0" * 6,
                       OUR_IP)
    return BCAST + PEER_MAC + b"\x08\x06" + body


def icmp_echo(data: bytes = b"0123456789abcdef") -> bytes:
    msg = struct.pack("!BBHHH", 8, 0, 0, 0x1234, 1) + data
    msg = msg[:2] + struct.pack("!H", csum(msg)) + msg[4:]
    return ipv4(1, msg)


def udp(payload: bytes, port: int = 7) -> bytes:
    return ipv4(17, struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload)


# --- fuzz_rx ------------------------------------------------------------------------------

def op_frame(frame: bytes) -> bytes:
    return bytes([FRAME]) + struct.pack("<H", len(frame)) + frame


def rx(n: int = 63) -> bytes:
    return bytes([RX, n])


RX_SEEDS = {
    # three good frames, answered, the answers completed
    "fixed_frames": bytes([RING16]) + op_frame(arp_request()) + op_frame(icmp_echo())
    + op_frame(udp(b"hello")) + rx() + bytes([TXDONE, 8]) + rx(),
    # a frame over five 256-byte strides, then more traffic
    "pool_multi_buffer": bytes([POOL | RING16]) + op_frame(udp(bytes(range(256)) * 4))
    + op_frame(arp_request()) + rx() + bytes([TXDONE, 8]) + op_frame(icmp_echo()) + rx(),
    # the first of three buffers with a length beyond its stride
    "pool_bad_first_len": bytes([POOL | RING16]) + op_frame(udp(bytes(560)))
    + bytes([LEN, 2]) + struct.pack("<H", 300) + op_frame(arp_request()) + rx(),
    # the first buffer shorter than the header
    "pool_short_first_len": bytes([POOL | RING16]) + op_frame(udp(bytes(560)))
    + bytes([LEN, 2]) + struct.pack("<H", 5) + rx() + op_frame(arp_request()) + rx(),
    # num_buffers 0, then beyond what was published
    "pool_bad_num_buffers": bytes([POOL | RING16]) + op_frame(udp(bytes(560)))
    + bytes([NBUFS]) + struct.pack("<H", 0) + rx() + op_frame(udp(bytes(560)))
    + bytes([NBUFS]) + struct.pack("<H", 9) + rx() + op_frame(icmp_echo()) + rx(),
    # a used id for a buffer twice, one out of range, one for a never-posted descriptor
    "fixed_bad_ids": bytes([RING16]) + op_frame(arp_request())
    + bytes([USED, 0]) + struct.pack("<H", 60) + bytes([USED, 0x80]) + struct.pack("<I", 70000)
    + struct.pack("<H", 60) + bytes([PUBLISH]) + rx() + op_frame(icmp_echo()) + rx(),
    # a used index far ahead of the buffers in flight
    "fixed_index_jump": bytes([RING16]) + op_frame(arp_request()) + bytes([IDX, 100]) + rx(),
    # transmit completions with bad ids
    "tx_bad_completions": bytes([RING16]) + op_frame(icmp_echo()) + op_frame(arp_request())
    + rx() + bytes([TXUSED, 0x80]) + struct.pack("<I", 0xDEADBEEF) + bytes([TXUSED, 0])
    + bytes([TXUSED, 0]) + op_frame(udp(b"x")) + rx(),
    # the device scribbling over the descriptor table, then receiving
    "scribble_descriptors": bytes([POOL | RING16]) + bytes([SCRIBBLE]) + struct.pack("<H", 0)
    + bytes([16]) + bytes(range(0xF0, 0x100)) + op_frame(arp_request()) + rx(),
}


# --- fuzz_stack -------------------------------------------------------------------------

def stack_input(flags: int, *frames: bytes) -> bytes:
    return bytes([flags]) + b"".join(struct.pack("!H", len(f)) + f for f in frames)


STACK_SEEDS = {
    "good_frames": stack_input(0, arp_request(), icmp_echo(), udp(b"ping")),
    "fix_checksums": stack_input(1 | 4 | 8, udp(b"x" * 100, port=53), icmp_echo(b"y" * 60)),
    "fragments_and_options": stack_input(1, ipv4(17, bytes(16), frag=0x2000),
                                         ipv4(1, bytes(8), frag=0x0010)),
    "tx_fails": stack_input(2, arp_request(), icmp_echo()),
}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: make_seeds.py CORPUS_DIR", file=sys.stderr)
        return 2
    root = Path(argv[1])
    for sub, seeds in (("fuzz_rx", RX_SEEDS), ("fuzz_stack", STACK_SEEDS)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for name, data in seeds.items():
            (root / sub / f"{name}.bin").write_bytes(data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
