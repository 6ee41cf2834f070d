"""SSH key pairs for ``os-keypairs``: import a public key, or generate a pair when none is given."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

#: Key pairs belong to the one simulated IAM user.
USER_ID = "b3b0e5ac5b1d4e8d9c0f1a2b3c4d5e6f"


def fingerprint(public_key: str) -> str:
    """Nova's fingerprint: MD5 of the key blob, colon-separated hex."""
    parts = public_key.split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
        raise ValueError("not an OpenSSH public key")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ValueError("the key is not valid base64") from None
    digest = hashlib.md5(blob).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def generate() -> tuple[str, str]:
    """A new ed25519 pair as (OpenSSH public key, OpenSSH private key)."""
    private = ed25519.Ed25519PrivateKey.generate()
    public_text = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    private_text = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    return public_text.decode(), private_text.decode()


def build(name: str, public_key: str | None, created: datetime) -> dict:
    """A stored key pair; ``private_key`` is present only when we generated it."""
    private_key = None
    if not public_key:
        public_key, private_key = generate()
        public_key = f"{public_key} Generated-by-Nova"
    keypair = {
        "name": name,
        "public_key": public_key,
        "fingerprint": fingerprint(public_key),
        "type": "ssh",
        "user_id": USER_ID,
        "created_at": created.strftime("%Y-%m-%dT%H:%M:%S.%f"),
    }
    if private_key:
        keypair["private_key"] = private_key
    return keypair


def summary(keypair: dict) -> dict:
    return {k: keypair[k] for k in ("name", "public_key", "fingerprint", "type")}


def detail(keypair: dict) -> dict:
    return {
        **summary(keypair),
        "user_id": keypair.get("user_id", USER_ID),
        "id": abs(hash(keypair["name"])) % 100000,
        "created_at": keypair.get("created_at", "2026-01-01T00:00:00.000000"),
        "deleted": False,
        "deleted_at": None,
        "updated_at": None,
    }
