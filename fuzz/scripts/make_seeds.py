#!/usr/bin/env python3
"""Writes the hand-made seed inputs into fuzz/corpus/<target>/seed-*.

Re-running is idempotent (file names are content hashes). Run from anywhere.
"""
import hashlib, ipaddress, os, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- upgrade_route -------------------------------------------------------------------
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
base = [
    ("Host", "relay.example"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", KEY),
    ("Sec-WebSocket-Version", "13"),
]


def req(line="GET / HTTP/1.1", headers=base, extra=(), tail=""):
    h = "".join(f"{k}: {v}\r\n" for k, v in list(headers) + list(extra))
    return f"{line}\r\n{h}\r\n{tail}"


for extra in [
    [("Sec-WebSocket-Protocol", "mosaic2024")],
    [("Sec-WebSocket-Protocol", "chat, mosaic2024"), ("X-Mosaic-Features", "a;b")],
    [("Sec-WebSocket-Protocol", "mosaic2025"), ("Sec-WebSocket-Protocol", " ,mosaic2024")],
    [("Sec-WebSocket-Protocol", "mosaic2025"), ("X-Mosaic-Features", "a, b,,a"),
     ("X-Mosaic-Server-Authenticate-Nonce", "n0nce")],
    [("Sec-WebSocket-Protocol", "Mosaic2024")],
    [],
    [("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")],
    [("X-Mosaic-Client-Key", "mopub0forged"), ("X-Forwarded-For", "6.6.6.6"),
     ("X-Real-IP", "6.6.6.6"), ("Forwarded", "for=6.6.6.6"), ("X-Forwarded-Proto", "https"),
     ("X-Forwarded-Host", "evil"), ("Sec-WebSocket-Protocol", "mosaic2024")],
    [("Transfer-Encoding", "chunked"), ("Content-Length", "5"), ("Keep-Alive", "x")],
    [("Origin", "https://client.example"), ("User-Agent", "fuzz")],
]:
    for tail in ["", "mosaic2024\n1", "mosaic2024, mosaic2025\n0", "\n0"]:
        put("upgrade_route", req(extra=extra, tail=tail))
put("upgrade_route", req(line="POST / HTTP/1.1"))
put("upgrade_route", req(line="GET / HTTP/1.0"))
put("upgrade_route", req(line="GET /path?x=1&y=%20 HTTP/1.1"))
put("upgrade_route", req(headers=[h for h in base if h[0] != "Sec-WebSocket-Key"]))
put("upgrade_route", req(headers=[(k, "8" if k.endswith("Version") else v) for k, v in base]))
put("upgrade_route", req(headers=[(k, "keep-alive, Upgrade" if k == "Connection" else v) for k, v in base]))
put("upgrade_route", req(extra=[("Sec-WebSocket-Key", KEY)]))
put("upgrade_route", req(headers=[(k, "dGhlIHNhbXBsZSBub25jZ!==" if k.endswith("Key") else v) for k, v in base]))
put("upgrade_route", "GET / HTTP/1.1\r\nHost: x\r\n\r\n")

# ---- features ------------------------------------------------------------------------
for s in [
    "ca;b;c\nbb;a\nga\ngb",
    "c a ; ;b;a\ncc;b\nbc;b;a\ngc\nga\ngb",
    "c\nba\nga",
    "cx\ngx",
    "ca;b\nba;b\nga\ngb",
    "c-\nb-\ng-",
    "cfeature-1;feature-2\nbfeature-2\ngfeature-2\ngfeature-1",
    "c\xc3\xa9;a\nba\nga",
    "s\nca, b,,a\nbb,a\nga\ngb",
    "s\nca;b,c\nba;b,c\nga;b\ngc",
    "s\nc" + ",".join(f"f{i}" for i in range(200)) + "\nbf1,f150\ngf1\ngf150",
]:
    put("features", s.encode("latin-1"))

# ---- frame_tracker / mosaic_head -----------------------------------------------------
MASK = bytes([1, 2, 3, 4])


def frame(op, payload, mask=False, fin=True, rsv=0):
    out = bytearray([(0x80 if fin else 0) | (rsv << 4) | op])
    m = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        out.append(m | n)
    elif n <= 0xFFFF:
        out.append(m | 126)
        out += struct.pack(">H", n)
    else:
        out.append(m | 127)
        out += struct.pack(">Q", n)
    if mask:
        out += MASK
        out += bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return bytes(out)


def u24(n):
    return struct.pack("<I", n)[:3]


# Seed-era layouts.
query = bytes([0x01, 7, 9, 0]) + struct.pack("<H", 3) + b"\0\0" + b"abc"
close_query = bytes([0x02, 7, 9, 0])
submission = bytes([0x03]) + u24(5) + b"hello"
record = bytes([0x80, 7, 9, 0, 0]) + u24(4) + b"rec!"
query_complete = bytes([0x81, 7, 9, 0])
query_closed = bytes([0x82, 7, 9, 0x30])
submission_result = bytes([0x83, 0, 0, 1]) + bytes(32)
unrecognized = bytes([0xF0, 1, 2, 3])
client_msgs = [query, close_query, submission, unrecognized]
server_msgs = [record, query_complete, query_closed, submission_result, unrecognized]

for m in client_msgs + server_msgs + [bytes([0x05, 1]), bytes([0x90]), b""]:
    for cfg in range(8):
        put("mosaic_head", bytes([cfg]) + m[:9])


def client_stream(msgs):
    return b"".join(frame(2, m, mask=True) for m in msgs)


def server_stream(msgs):
    return b"".join(frame(2, m) for m in msgs)


streams = []
# cfg bit0: direction (0 client->upstream), bit1 rules, bit2 direction-only, bits3-4 cap,
# bit5 keep going transparent after a violation.
cs = client_stream(client_msgs) + frame(8, b"\x03\xe8bye", mask=True)
ss = server_stream(server_msgs) + frame(8, b"\x03\xe8")
frag = (frame(2, submission[:2], mask=True, fin=False) + frame(9, b"hi", mask=True)
        + frame(0, submission[2:6], mask=True, fin=False) + frame(0, submission[6:], mask=True))
big = bytes([0x03]) + u24(300) + bytes(300)
text = frame(1, b'["REQ","x",{}]', mask=True)
nostr_down = frame(1, b'["EOSE","x"]', rsv=4) + frame(1, b"[]")
for cfg in [0b10, 0b110, 0b100010, 0b1010, 0b10010, 0]:
    for seed in [0, 1, 2, 3]:
        for s in [cs, frag, client_stream([big]), text + cs, cs[:5] + b"\xff" * 8,
                  frame(2, query, mask=False), frame(0x3, b"", mask=True)]:
            streams.append(bytes([cfg, seed]) + s)
for cfg in [0b11, 0b111, 0b100011, 1]:
    for seed in [0, 1, 2, 3]:
        for s in [ss, nostr_down, server_stream([bytes([0x80]) + bytes(7)]),
                  frame(2, query), frame(2, record, mask=True),
                  server_stream([bytes(200)]) + frame(8, b"")]:
            streams.append(bytes([cfg, seed]) + s)
# Extended lengths (126 / 127) and a non-minimal one.
streams.append(bytes([3, 0]) + frame(2, record[:8] + bytes(200)))
streams.append(bytes([3, 0]) + bytes([0x82, 127]) + struct.pack(">Q", 70000) + bytes(50))
streams.append(bytes([3, 0]) + bytes([0x82, 126, 0, 5]) + bytes(5))
streams.append(bytes([2, 1]) + bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 63) + MASK)
for s in streams:
    put("frame_tracker", s)

# ---- tracker_2025 --------------------------------------------------------------------
# Specification 0.8.0 layouts: u24 length at [1:4], query id at [4:6].
def m25(t, rest=b"", qid=(7, 9), mid=b"\0\0"):
    body = bytes(qid) + mid + rest
    return bytes([t]) + u24(4 + len(body)) + body


get = m25(0x01, bytes(48))
query25 = m25(0x02, b"filter", mid=b"\x05\0")
subscribe = m25(0x03, b"filter")
unsubscribe = m25(0x04)
submission25 = bytes([0x05]) + u24(8 + 60) + bytes(4) + bytes(range(60))
blob_sub = bytes([0x07, 0]) + struct.pack("<Q", 5)[:6] + bytes(32) + b"blob!"
blob_get = bytes([0x08]) + bytes(7) + bytes(32)
record25 = m25(0x80, b"record")
locally_complete = m25(0x81)
query_closed25 = bytes([0x82]) + u24(8) + bytes([7, 9, 64, 0])
submission_result25 = bytes([0x83]) + u24(40) + bytes([2, 0, 0, 0]) + bytes(32)
blob_sub_result = bytes([0x85, 1]) + bytes(6) + bytes(32)
blob_result = bytes([0x86, 1]) + struct.pack("<Q", 3)[:6] + bytes(32) + b"abc"
closing = bytes([0xFE, 64]) + bytes(6)
unrecognized25 = bytes([0xF0]) + u24(8) + bytes(4)
# The other framing in use: zeros at [1:4], u32 length at [4:8].
other = bytes([0x03, 0, 0, 0]) + struct.pack("<I", 14) + b"filter"
c25 = [get, query25, subscribe, unsubscribe, submission25, blob_sub, blob_get, other,
       unrecognized25, bytes([0x11]) + bytes(71)]
s25 = [record25, locally_complete, query_closed25, submission_result25, blob_sub_result,
       blob_result, closing, unrecognized25]
for cfg in [0b10, 0b110, 0b1110, 0b10010]:
    for seed in [0, 1, 2, 3]:
        for s in [client_stream(c25), client_stream([other]), client_stream([record25]),
                  client_stream([unsubscribe[:-1]]), client_stream(c25[:3]) + cs[:7]]:
            put("tracker_2025", bytes([cfg, seed]) + s)
for cfg in [0b11, 0b111, 0b1111]:
    for seed in [0, 1]:
        for s in [server_stream(s25), server_stream([get]), server_stream([closing[:4]])]:
            put("tracker_2025", bytes([cfg, seed]) + s)
for m in c25 + s25:
    for cfg in [0, 1, 4, 5, 8, 9, 12, 13]:
        put("tracker_2025", bytes([cfg, 0]) + m[:48])

# ---- proxy_protocol ------------------------------------------------------------------
V2SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(ver_cmd, fam, block):
    return V2SIG + bytes([ver_cmd, fam]) + struct.pack(">H", len(block)) + block


after = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
for hdr in [
    b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
    b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n",
    b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
    b"PROXY TCP6 ::ffff:1.2.3.4 ::ffff:5.6.7.8 1 2\r\n",
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
    b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
    v2(0x21, 0x11, bytes([192, 168, 0, 1, 10, 0, 0, 1, 0xDC, 0x04, 0x01, 0xBB])),
    v2(0x21, 0x11, bytes([1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 1, 187]) + b"\x01\x00\x02h2\x04\x00\x00"
       + b"\x02\x00\x0brelay.local" + b"\x20\x00\x05\x07\x00\x00\x00\x00"),
    v2(0x21, 0x21, ipaddress.IPv6Address("2001:db8::7").packed + ipaddress.IPv6Address("::1").packed
       + b"\x30\x39\x20\xfb"),
    v2(0x20, 0x00, b""),
    v2(0x20, 0x11, bytes(12)),
    v2(0x21, 0x00, b""),
    v2(0x21, 0x31, bytes(216)),
    v2(0x21, 0x12, bytes(12)),
    v2(0x11, 0x11, bytes(12)),
    v2(0x21, 0x11, bytes(12) + b"\x01\x00\x05x"),
    V2SIG + bytes([0x21, 0x11, 0x02, 0x01]),
]:
    put("proxy_protocol", hdr)
    put("proxy_protocol", hdr + after)
put("proxy_protocol", b"GET / HTTP/1.1\r\n")
put("proxy_protocol", after)

# ---- config_parse --------------------------------------------------------------------
with open(os.path.join(ROOT, "..", "proxy.yaml.example"), "rb") as f:
    put("config_parse", f.read())
for text in [
    "",
    "listen: \"127.0.0.1:8443\"\n",
    "mosaic:\n  backends:\n    - url: ws://127.0.0.1:8081\nnostr:\n  upstream: ws://127.0.0.1:7777\n",
    "limits:\n  handshake_timeout: 500ms\n  idle_timeout: 5m\nshutdown:\n  drain_timeout: 1h\n",
    "forwarded:\n  trusted_proxies: [10.0.0.0/8, \"fd00::/8\", 192.0.2.1]\n  proxy_protocol: true\n",
    "tls:\n  key_file: master.pem\n  certificate: raw-public-key\n  client_auth: required\n  min_version: \"1.3\"\n",
    "mosaic:\n  validate: direction\n  max_message_bytes: 10\n  balance: client-key-hash\n  backends:\n    - dns: backend.local:8081\n",
    "log:\n  format: json\n  level: debug\n",
    "bogus: 1\n",
    "limits:\n  handshake_timeout: 10\n",
    "mosaic:\n  backends:\n    - url: \"ws://a\\nb\"\n",
    "listen: [1, 2\n",
    "a: &x [*x]\n",
]:
    put("config_parse", text)
