"""Signed registry cache entries (the Nix binary cache model): `banger cache keygen` makes an
ed25519 key pair in the config dir; while that key exists, every entry `cache push`/`--cache-to`
writes carries its signature; with `trusted_keys` in the config (a list of `banger-ed25519:<base64>`
public keys, as keygen prints them), a pulled entry must be signed by one of them, else it is
refused like a tampered one.

What is signed: "banger-cache-v1", the entry's tag (action-<key> or image-<name>) and the sha256
of its config (the record, or the image record). The record's outputs are digests the pull checks
every layer against, so the signature covers them too. The signature and the public key travel
in the manifest's annotations.
"""
from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import Path

from banger.app.cache import CacheError

PREFIX = "banger-ed25519:"
A_SIGNED_BY, A_SIGNATURE = "dev.banger.signed-by", "dev.banger.signature"
KEY_FILE = "cache-signing.key"


def message(tag: str, config_digest: str) -> bytes:
    return b"banger-cache-v1\0" + tag.encode() + b"\0" + config_digest.encode()


@dataclass(frozen=True)
class Signer:
    private: object  # Ed25519PrivateKey
    public: str  # banger-ed25519:<base64 of the raw 32 bytes>

    def annotations(self, tag: str, config_digest: str) -> dict[str, str]:
        sig = self.private.sign(message(tag, config_digest))
        return {A_SIGNED_BY: self.public, A_SIGNATURE: base64.b64encode(sig).decode()}


def key_path(dirs) -> Path:
    return dirs.config / KEY_FILE


def public_text(private) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode()


def keygen(dirs) -> str:
    """Make the signing key (refusing to replace one); its public key, for trusted_keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = key_path(dirs)
    if path.exists():
        raise CacheError(f"{path} exists already; its public key is {load_signer(dirs).public} "
                         "(remove the file first to make a new one)")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return public_text(private)


def load_signer(dirs) -> Signer | None:
    path = key_path(dirs)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        private = None
    if not isinstance(private, Ed25519PrivateKey):
        raise CacheError(f"{path} is not an ed25519 private key; remove it and run `banger cache keygen`")
    return Signer(private, public_text(private))


def trusted_keys(config: dict) -> list[str]:
    value = config.get("trusted_keys", [])
    if not isinstance(value, list) or not all(isinstance(v, str) and _raw(v) for v in value):
        raise CacheError(f'trusted_keys in banger\'s config must be a list of "{PREFIX}<base64>" public keys '
                         "as `banger cache keygen` prints them")
    return value


def _raw(public: str) -> bytes | None:
    if not public.startswith(PREFIX):
        return None
    try:
        raw = base64.b64decode(public[len(PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def problem(manifest: dict, tag: str, config_digest: str, trusted: list[str]) -> str | None:
    """Why the entry is not trusted (None: it is, or no trust is configured)."""
    if not trusted:
        return None
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    ann = manifest.get("annotations") if isinstance(manifest.get("annotations"), dict) else {}
    signer, sig = ann.get(A_SIGNED_BY), ann.get(A_SIGNATURE)
    if not isinstance(signer, str) or not isinstance(sig, str):
        return "it is not signed and trusted_keys is set"
    if signer not in trusted:
        return f"it is signed by {signer[:40]}…, which is not in trusted_keys"
    try:
        Ed25519PublicKey.from_public_bytes(_raw(signer)).verify(base64.b64decode(sig, validate=True),
                                                               message(tag, config_digest))
    except (InvalidSignature, binascii.Error, ValueError):
        return f"its signature by {signer[:40]}… does not verify"
    return None
