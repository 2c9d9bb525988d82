"""Seed corpora for the fuzz harnesses, from the golden pcaps (tests/golden/): each harness's
record format (see the comment at the top of fuzz/<name>.c) around real VXLAN datagrams and
inner frames.  Writes fuzz seeds into the directory given, one subdirectory per harness.

    python fuzz/seeds.py build/fuzz/seeds
"""

import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from vxland.capture import read_pcap  # noqa: E402

GOLDEN = os.path.join(HERE, "..", "tests", "golden")


def golden():
    """(VXLAN payload, inner frame) pairs of every golden recording."""
    pairs = []
    for source in ("kernel", "scapy"):
        taps = read_pcap(os.path.join(GOLDEN, f"{source}-tap.pcap"))
        wires = read_pcap(os.path.join(GOLDEN, f"{source}-underlay.pcap"))
        pairs += [(w[42:], t) for t, w in zip(taps, wires)]
    return pairs


def decap_record(payload, peer=2, tos=0, hint=0):
    return struct.pack("!HBBH", len(payload), peer, tos, hint) + payload


def tap_record(frame, vh=bytes(10), net=0):
    return bytes([net]) + vh + struct.pack("!H", len(frame)) + frame


def coalesce_record(frame, flags=0, gso_type=0, start=0, offset=0):
    return struct.pack("!BBHHH", flags, gso_type, start, offset, len(frame)) + frame


def pump_record(segment, gso=0, segments=1, tos=0, peer=2):
    return struct.pack("!HBBBH", gso, segments - 1, tos, peer, len(segment)) + segment


def seeds():
    pairs = golden()
    payloads = [p for p, _ in pairs]
    frames = [f for _, f in pairs]
    retagged = [p[:4] + b"\x00\x00\x2b" + p[7:] for p in payloads]          # VNI 43: the other network
    yield "decap", "golden", b"".join(decap_record(p) for p in payloads + retagged)
    yield "decap", "golden-ce", b"".join(decap_record(p, tos=3) for p in payloads)
    yield "tap", "golden", b"".join(tap_record(f, net=i % 2) for i, f in enumerate(frames))
    yield "coalesce", "golden", b"\x01" + b"".join(coalesce_record(f) for f in frames)
    for i, p in enumerate(payloads):
        yield "pump", f"golden-{i}", pump_record(p, gso=len(p), segments=8) + pump_record(p)


def main():
    out = sys.argv[1]
    for harness, name, data in seeds():
        os.makedirs(os.path.join(out, harness), exist_ok=True)
        with open(os.path.join(out, harness, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
