#!/usr/bin/env python3
"""The callers' audio for loadtest/voicemail-bench.sh and
conference-bench.sh, made rather than shipped as binary blobs: G.711
µ-law, 8 kHz mono, 20 ms frames.

    loadtest/vm-audio.py --seconds 60 --pcap OUT.pcap [--wav OUT.wav]

--pcap: one RTP stream (payload type 0, 160-byte frames, 50 packets/s)
  of SECONDS seconds in a pcap file (Ethernet/IPv4/UDP,
  127.0.0.1:6000 -> 127.0.0.1:6002), for SIPp's play_pcap_audio, which
  sends each packet's UDP payload as it is at the capture's pace (its
  own ports and addresses replace the capture's). Sequence numbers and
  timestamps run on without a jump for the whole length, so that the
  node's receiver sees neither loss nor a new timeline: play_pcap_audio
  cannot loop a capture without restarting both.
--wav: the same audio, 10 s of it, as a µ-law WAV (format 7), for SIPp's
  rtp_stream, which loops it and writes the RTP headers itself.

The audio is a sum of two tones (400 Hz and 1,100 Hz, together about
-12 dBFS) whose level swings slowly, never near silence, so that no
recording ends on the voicemail's silence limit (5 s under an RMS of
100) and the jitter buffer's concealment is not hidden by quiet audio.
Only the standard library is used.
"""
import argparse
import math
import struct

RATE_HZ = 8000
FRAME_SAMPLES = 160
FRAME_US = 20_000
PAYLOAD_TYPE_PCMU = 0
SSRC = 0x5EED0001


def linear_to_ulaw(sample):
    """ITU-T G.711 µ-law of a 16-bit sample."""
    bias, clip = 0x84, 32635
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), clip) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not magnitude & mask:
        exponent -= 1
        mask >>= 1
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def samples(count):
    """The audio: two tones under a slow level swing (0.5-1.0)."""
    for n in range(count):
        t = n / RATE_HZ
        level = 0.75 + 0.25 * math.sin(2 * math.pi * 0.3 * t)
        value = 5000 * math.sin(2 * math.pi * 400 * t) + 3000 * math.sin(2 * math.pi * 1100 * t)
        yield int(round(level * value))


def ulaw_frames(seconds):
    total = int(seconds * RATE_HZ) // FRAME_SAMPLES * FRAME_SAMPLES
    encoded = bytes(linear_to_ulaw(s) for s in samples(total))
    return [encoded[i:i + FRAME_SAMPLES] for i in range(0, total, FRAME_SAMPLES)]


def ip_checksum(header):
    total = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def write_pcap(path, frames):
    src_ip, dst_ip = bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1])
    src_port, dst_port = 6000, 6002
    with open(path, "wb") as out:
        # Global header: microsecond timestamps, snaplen 65535, Ethernet.
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        sequence, timestamp = 1000, 160_000
        for index, payload in enumerate(frames):
            rtp = struct.pack("!BBHII", 0x80, (0x80 if index == 0 else 0) | PAYLOAD_TYPE_PCMU,
                              sequence & 0xFFFF, timestamp & 0xFFFFFFFF, SSRC) + payload
            udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(rtp), 0) + rtp
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), index & 0xFFFF, 0x4000, 64, 17,
                             0, src_ip, dst_ip)
            ip = ip[:10] + struct.pack("!H", ip_checksum(ip)) + ip[12:]
            ethernet = b"\x00\x00\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x00\x01" + b"\x08\x00"
            packet = ethernet + ip + udp
            at_us = index * FRAME_US
            out.write(struct.pack("<IIII", at_us // 1_000_000, at_us % 1_000_000, len(packet), len(packet)))
            out.write(packet)
            sequence += 1
            timestamp += FRAME_SAMPLES


def write_wav(path, frames):
    data = b"".join(frames)
    # WAVE_FORMAT_MULAW (7): 8 kHz, mono, 8 bits; a non-PCM format has a
    # cbSize field and a fact chunk.
    fmt = struct.pack("<HHIIHHH", 7, 1, RATE_HZ, RATE_HZ, 1, 8, 0)
    fact = struct.pack("<I", len(data))
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"fact" + struct.pack("<I", len(fact)) + fact
            + b"data" + struct.pack("<I", len(data)) + data)
    with open(path, "wb") as out:
        out.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the pcap's stream")
    parser.add_argument("--pcap", help="write the RTP stream as a pcap file here")
    parser.add_argument("--wav", help="write 10 s of the audio as a µ-law WAV file here")
    args = parser.parse_args()
    if not args.pcap and not args.wav:
        parser.error("nothing to write: give --pcap and/or --wav")
    if args.pcap:
        write_pcap(args.pcap, ulaw_frames(args.seconds))
    if args.wav:
        write_wav(args.wav, ulaw_frames(10))


if __name__ == "__main__":
    main()
