#!/usr/bin/env python3
"""Known-answer vectors of the OneCard reader protocol (docs/reader-protocol.md).

An implementation independent of the Rust code: Python 3's standard library only (hmac,
hashlib; HKDF per RFC 5869 below), with X25519 (RFC 7748) and ChaCha20-Poly1305 (RFC 8439)
written out here in pure Python and checked against the RFCs' own test vectors. When the
`cryptography` package is installed, every X25519 and AEAD result is also recomputed with it
and must agree (pass --require-cryptography to make its absence an error).

Prints every intermediate value as lowercase hex; tests/known_answers.rs asserts that the Rust
implementation gives exactly these bytes.

    python3 scripts/known-answers.py
"""

import hashlib
import hmac
import json
import struct
import sys

# --------------------------------------------------------------------------------------------
# HKDF-SHA256 (RFC 5869)
# --------------------------------------------------------------------------------------------


def hkdf_sha256(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()  # extract
    okm, block, counter = b"", b"", 1
    while len(okm) < length:  # expand
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


# --------------------------------------------------------------------------------------------
# X25519 (RFC 7748, section 5): the Montgomery ladder over GF(2^255 - 19)
# --------------------------------------------------------------------------------------------

P = 2**255 - 19
A24 = 121665


def clamp(k: bytes) -> bytes:
    b = bytearray(k)
    b[0] &= 248
    b[31] &= 127
    b[31] |= 64
    return bytes(b)


def x25519(k: bytes, u: bytes) -> bytes:
    assert len(k) == 32 and len(u) == 32
    scalar = int.from_bytes(clamp(k), "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)  # the top bit of u is masked
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (scalar >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % P, (x2 - z2) % P
        aa, bb = a * a % P, b * b % P
        e = (aa - bb) % P
        c, d = (x3 + z3) % P, (x3 - z3) % P
        da, cb = d * a % P, c * b % P
        x3 = (da + cb) ** 2 % P
        z3 = x1 * (da - cb) ** 2 % P
        x2 = aa * bb % P
        z2 = e * (aa + A24 * e) % P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, P - 2, P) % P).to_bytes(32, "little")


X25519_BASE = (9).to_bytes(32, "little")


def x25519_public(k: bytes) -> bytes:
    return x25519(k, X25519_BASE)


# --------------------------------------------------------------------------------------------
# ChaCha20-Poly1305 (RFC 8439)
# --------------------------------------------------------------------------------------------

M32 = 0xFFFFFFFF


def _rotl(v: int, n: int) -> int:
    return ((v << n) & M32) | (v >> (32 - n))


def _quarter(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & M32; s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & M32; s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & M32; s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & M32; s[b] = _rotl(s[b] ^ s[c], 7)


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    state = (
        [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
        + list(struct.unpack("<8I", key))
        + [counter & M32]
        + list(struct.unpack("<3I", nonce))
    )
    s = state[:]
    for _ in range(10):
        _quarter(s, 0, 4, 8, 12); _quarter(s, 1, 5, 9, 13)
        _quarter(s, 2, 6, 10, 14); _quarter(s, 3, 7, 11, 15)
        _quarter(s, 0, 5, 10, 15); _quarter(s, 1, 6, 11, 12)
        _quarter(s, 2, 7, 8, 13); _quarter(s, 3, 4, 9, 14)
    return struct.pack("<16I", *((x + y) & M32 for x, y in zip(s, state)))


def chacha20_xor(key: bytes, counter: int, nonce: bytes, data: bytes) -> bytes:
    out = bytearray()
    for i in range(0, len(data), 64):
        ks = chacha20_block(key, counter + i // 64, nonce)
        out += bytes(x ^ y for x, y in zip(data[i : i + 64], ks))
    return bytes(out)


def poly1305(key: bytes, msg: bytes) -> bytes:
    r = int.from_bytes(key[:16], "little") & 0x0FFFFFFC0FFFFFFC0FFFFFFC0FFFFFFF
    s = int.from_bytes(key[16:], "little")
    p, acc = (1 << 130) - 5, 0
    for i in range(0, len(msg), 16):
        n = int.from_bytes(msg[i : i + 16] + b"\x01", "little")
        acc = (acc + n) * r % p
    return ((acc + s) & ((1 << 128) - 1)).to_bytes(16, "little")


def _pad16(b: bytes) -> bytes:
    return b"\x00" * (-len(b) % 16)


def aead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ChaCha20-Poly1305: ciphertext || 16-byte tag."""
    otk = chacha20_block(key, 0, nonce)[:32]
    ct = chacha20_xor(key, 1, nonce, plaintext)
    mac_data = aad + _pad16(aad) + ct + _pad16(ct) + struct.pack("<QQ", len(aad), len(ct))
    return ct + poly1305(otk, mac_data)


def aead_decrypt(key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
    ct, tag = sealed[:-16], sealed[-16:]
    otk = chacha20_block(key, 0, nonce)[:32]
    mac_data = aad + _pad16(aad) + ct + _pad16(ct) + struct.pack("<QQ", len(aad), len(ct))
    if not hmac.compare_digest(poly1305(otk, mac_data), tag):
        raise ValueError("tag mismatch")
    return chacha20_xor(key, 1, nonce, ct)


# --------------------------------------------------------------------------------------------
# Self-checks against the RFCs' test vectors
# --------------------------------------------------------------------------------------------

h = bytes.fromhex


def self_check() -> None:
    # RFC 5869, A.1 (test case 1).
    okm = hkdf_sha256(bytes(range(0x0D)), b"\x0b" * 22, bytes(range(0xF0, 0xFA)), 42)
    assert okm == h(
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    ), okm.hex()
    # RFC 7748, 5.2 (first vector) and 6.1 (Diffie-Hellman).
    assert x25519(
        h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
        h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"),
    ) == h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    alice = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert x25519_public(alice) == h(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
    )
    assert x25519_public(bob) == h(
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
    )
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert x25519(alice, x25519_public(bob)) == shared
    assert x25519(bob, x25519_public(alice)) == shared
    # RFC 8439, 2.3.2 (the ChaCha20 block function).
    block = chacha20_block(bytes(range(32)), 1, h("000000090000004a00000000"))
    assert block == h(
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
    ), block.hex()
    # RFC 8439, 2.5.2 (Poly1305).
    assert poly1305(
        h("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b"),
        b"Cryptographic Forum Research Group",
    ) == h("a8061dc1305136c6c22b8baf0c0127a9")
    # RFC 8439, 2.8.2 (the AEAD).
    plaintext = (
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for "
        b"the future, sunscreen would be it."
    )
    key, nonce = bytes(range(0x80, 0xA0)), h("070000004041424344454647")
    aad = h("50515253c0c1c2c3c4c5c6c7")
    sealed = aead_encrypt(key, nonce, plaintext, aad)
    assert sealed[-16:] == h("1ae10b594f09e26a7e902ecbd0600691"), sealed[-16:].hex()
    assert sealed[:16] == h("d31a8d34648e60db7b86afbc53ef7ec2"), sealed[:16].hex()
    assert aead_decrypt(key, nonce, sealed, aad) == plaintext


# --------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------

CARD_KEY_SALT = b"OneCard card key v1"
CARD_TOKEN_SALT = b"OneCard card token v1"
CARD_TOKEN_INFO = b"token"
PIN_KEY_SALT = b"OneCard PIN verification key v1"
PIN_KEY_INFO = b"pvk"
PIN_VERIFIER_TAG = b"OCPV1"
PIN_TRANSPORT_SALT = b"OneCard PIN v1"
CRYPTOGRAM_TAG = b"OCC1"


def card_key(master: bytes, card_number: str) -> bytes:
    return hkdf_sha256(CARD_KEY_SALT, master, card_number.encode("ascii"), 32)


def cryptogram_input(challenge: bytes, order_id: str, amount_cents: int, counter: int) -> bytes:
    oid = order_id.encode("utf-8")
    assert len(challenge) == 16 and 1 <= len(oid) <= 128
    return (
        CRYPTOGRAM_TAG
        + challenge
        + bytes([len(oid)])
        + oid
        + struct.pack(">Q", amount_cents)
        + struct.pack(">I", counter)
    )


def cryptogram(key: bytes, challenge: bytes, order_id: str, amount_cents: int, counter: int):
    return hmac_sha256(key, cryptogram_input(challenge, order_id, amount_cents, counter))[:16]


def token_key(master: bytes) -> bytes:
    return hkdf_sha256(CARD_TOKEN_SALT, master, CARD_TOKEN_INFO, 32)


def card_token(tkey: bytes, card_number: str) -> str:
    return hmac_sha256(tkey, card_number.encode("ascii")).hex()


def pin_key(master: bytes) -> bytes:
    return hkdf_sha256(PIN_KEY_SALT, master, PIN_KEY_INFO, 32)


def pin_verifier(pvk: bytes, token: str, pin: str) -> bytes:
    t, p = token.encode("ascii"), pin.encode("ascii")
    return hmac_sha256(pvk, PIN_VERIFIER_TAG + bytes([len(t)]) + t + bytes([len(p)]) + p)


def transport_key(shared: bytes, challenge: bytes) -> bytes:
    return hkdf_sha256(PIN_TRANSPORT_SALT, shared, challenge, 32)


AID = b"\xf0" + b"ONECARD" + b"\x01"  # the applet's AID: proprietary F0, "ONECARD", version 01


def select_apdu() -> bytes:
    return bytes([0x00, 0xA4, 0x04, 0x00, len(AID)]) + AID + b"\x00"


def read_card_data_answer(card_number: str, holder_ref: str, counter: int) -> bytes:
    n, r = card_number.encode("ascii"), holder_ref.encode("ascii")
    return bytes([len(n)]) + n + bytes([len(r)]) + r + struct.pack(">I", counter) + b"\x90\x00"


def generate_cryptogram_apdu(challenge: bytes, amount_cents: int, order_id: str) -> bytes:
    oid = order_id.encode("utf-8")
    data = challenge + struct.pack(">Q", amount_cents) + bytes([len(oid)]) + oid
    return bytes([0x80, 0xAE, 0x00, 0x00, len(data)]) + data + b"\x00"


def cross_check_with_cryptography(values: dict) -> bool:
    """Recomputes X25519 and the AEAD with the `cryptography` package; False if absent."""
    try:
        from cryptography.hazmat.primitives.asymmetric.x25519 import (
            X25519PrivateKey,
            X25519PublicKey,
        )
        from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
        from cryptography.hazmat.primitives import serialization
    except ImportError:
        return False
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    node = X25519PrivateKey.from_private_bytes(values["node_secret"])
    reader = X25519PrivateKey.from_private_bytes(values["reader_secret"])
    assert node.public_key().public_bytes(*raw) == values["node_public"]
    assert reader.public_key().public_bytes(*raw) == values["reader_public"]
    shared = reader.exchange(X25519PublicKey.from_public_bytes(values["node_public"]))
    assert shared == values["shared_secret"]
    assert node.exchange(X25519PublicKey.from_public_bytes(values["reader_public"])) == shared
    aead = ChaCha20Poly1305(values["transport_key"])
    sealed = aead.encrypt(values["nonce"], values["pin"], values["challenge"])
    assert sealed == values["sealed"]
    assert aead.decrypt(values["nonce"], sealed, values["challenge"]) == values["pin"]
    return True


def main() -> int:
    self_check()

    # Fixed inputs.
    master = bytes(range(0x00, 0x20))
    number = "4000001234567890"
    challenge = bytes(range(0xA0, 0xB0))
    order_id = "order-42"
    amount_cents = 4999
    counter = 7
    pin = "2580"
    node_secret = bytes(range(0x40, 0x60))
    reader_secret = bytes(range(0x60, 0x80))
    nonce = bytes(range(0x80, 0x8C))

    ck = card_key(master, number)
    cin = cryptogram_input(challenge, order_id, amount_cents, counter)
    cg = cryptogram(ck, challenge, order_id, amount_cents, counter)
    # The same payment with counter 1001: out of the node's window (at most 1000 above the last
    # accepted counter) for a new card, whose last accepted counter is 0.
    cg_1001 = cryptogram(ck, challenge, order_id, amount_cents, 1001)
    tk = token_key(master)
    token = card_token(tk, number)
    pvk = pin_key(master)
    verifier = pin_verifier(pvk, token, pin)
    node_public = x25519_public(node_secret)
    reader_public = x25519_public(reader_secret)
    shared = x25519(reader_secret, node_public)
    assert shared == x25519(node_secret, reader_public), "X25519 agreement"
    tkey = transport_key(shared, challenge)
    sealed = aead_encrypt(tkey, nonce, pin.encode("ascii"), challenge)
    assert aead_decrypt(tkey, nonce, sealed, challenge) == pin.encode("ascii")
    apdu = generate_cryptogram_apdu(challenge, amount_cents, order_id)
    # The card before this payment: holder reference "alice", last counter 6.
    read_answer = read_card_data_answer(number, "alice", counter - 1)
    card_answer = struct.pack(">I", counter) + cg + b"\x90\x00"

    values = {
        "node_secret": node_secret,
        "reader_secret": reader_secret,
        "node_public": node_public,
        "reader_public": reader_public,
        "shared_secret": shared,
        "transport_key": tkey,
        "nonce": nonce,
        "pin": pin.encode("ascii"),
        "challenge": challenge,
        "sealed": sealed,
    }
    checked = cross_check_with_cryptography(values)
    if not checked and "--require-cryptography" in sys.argv[1:]:
        print("the cryptography package is not installed", file=sys.stderr)
        return 1

    rows = [
        ("inputs", None),
        ("issuer master key", master.hex()),
        ("card number", number),
        ("challenge", challenge.hex()),
        ("order id", order_id),
        ("amount (cents)", str(amount_cents)),
        ("counter", str(counter)),
        ("PIN", pin),
        ("node X25519 secret", node_secret.hex()),
        ("reader X25519 secret", reader_secret.hex()),
        ("nonce", nonce.hex()),
        ("card", None),
        ("card key", ck.hex()),
        ("cryptogram input", cin.hex()),
        ("cryptogram", cg.hex()),
        ("cryptogram with counter 1001", cg_1001.hex()),
        ("SELECT APDU", select_apdu().hex()),
        ("READ CARD DATA APDU", "80b0000000"),
        ("READ CARD DATA answer", read_answer.hex()),
        ("GENERATE CRYPTOGRAM APDU", apdu.hex()),
        ("card's answer", card_answer.hex()),
        ("card token and PIN verifier (node side)", None),
        ("token key", tk.hex()),
        ("card token", token),
        ("PVK", pvk.hex()),
        ("PIN verifier", verifier.hex()),
        ("PIN transport", None),
        ("node X25519 secret, clamped", clamp(node_secret).hex()),
        ("reader X25519 secret, clamped", clamp(reader_secret).hex()),
        ("node public", node_public.hex()),
        ("reader public", reader_public.hex()),
        ("shared secret", shared.hex()),
        ("transport key", tkey.hex()),
        ("ciphertext||tag", sealed.hex()),
        ("ciphertext", sealed[:-16].hex()),
        ("tag", sealed[-16:].hex()),
    ]
    for name, value in rows:
        if value is None:
            print(f"# {name}")
        else:
            print(f"{name:32} {value}")
    body = {
        "challenge_id": "ch_…",
        "counter": counter,
        "cryptogram": cg.hex(),
        "pin": {
            "reader_public": reader_public.hex(),
            "nonce": nonce.hex(),
            "ciphertext": sealed.hex(),
        },
        "delivery_address": "…",
    }
    print("# POST /v1/reader/authenticate body")
    print(json.dumps(body, indent=2, ensure_ascii=False))
    print(
        "# self-checks: RFC 5869 A.1, RFC 7748 5.2 and 6.1, RFC 8439 2.3.2, 2.5.2 and 2.8.2 passed;"
        + (
            " X25519 and ChaCha20-Poly1305 agree with the cryptography package"
            if checked
            else " the cryptography package is not installed (not cross-checked)"
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
