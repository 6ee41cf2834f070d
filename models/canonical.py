"""The canonical form of a validated batch, and its digest.

Two submissions mean the same batch when their canonical forms are equal: the name, the
servers with ``defaults`` merged in, as validated, and ``notify`` when given, keys sorted. The
command line sends this form (never the raw file: YAML's aliases, dates and comments never
travel), and the intake stores the SHA-256 of its digest form on the batch, so that a
resubmission with the same ``Idempotency-Key`` and another body can be told apart.

Of ``notify.secret`` the digest form keeps only its presence: the digest is stored and returned
in a 409, and a hash of the secret in it would let anyone holding it test guesses offline.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from models.spec import BatchSpec


def canonical_body(spec: BatchSpec) -> dict[str, Any]:
    """The batch as JSON-ready data that validates to ``spec`` again (defaults merged in)."""
    body: dict[str, Any] = {
        "name": spec.name,
        "servers": [server.model_dump(mode="json", exclude_none=True) for server in spec.servers],
    }
    if spec.notify is not None:
        body["notify"] = spec.notify.model_dump(mode="json", exclude_none=True)
    return body


def digest_body(spec: BatchSpec) -> dict[str, Any]:
    """The canonical body with the webhook secret only said to be set."""
    body = canonical_body(spec)
    notify = body.get("notify")
    if notify is not None and "secret" in notify:
        notify["secret"] = "set"
    return body


def batch_digest(spec: BatchSpec) -> str:
    """SHA-256 (hex) of the digest body, keys sorted, no whitespace.

    A batch without ``notify`` has the same digest as before ``notify`` was part of it.
    """
    text = json.dumps(digest_body(spec), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
