"""The key that signs people's decisions on gates, kept outside every workspace.

``orchestrate approve`` and ``reject`` sign what they record with it, and a run
counts a decision only when its signature holds: a file a stage wrote in
``approvals/`` (say, through a command under ``sandbox: none``) is not a
decision. The key lives in the user's state folder (``$XDG_STATE_HOME``, else
``~/.local/state``), under ``orchestrate/``, made on first use, readable by its
owner only, and hidden from sandboxed commands. Where there is no such folder
(a library caller that passes no environment), decisions are neither signed nor
checked, as before.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["KEY_FILE", "approval_key", "key_folder", "sign"]

KEY_FILE = "approvals.key"
KEY_BYTES = 32


def key_folder(environ: Mapping[str, str]) -> Path | None:
    """Where the key is kept, from the caller's environment (None when it names no home)."""
    base = environ.get("XDG_STATE_HOME") or (f"{environ['HOME']}/.local/state" if environ.get("HOME") else "")
    return Path(base) / "orchestrate" if base and os.path.isabs(base) else None


def approval_key(folder: Path | None) -> bytes | None:
    """The key in ``folder``, made there on first use; None without a folder, or where none can be made."""
    if folder is None:
        return None
    path = folder / KEY_FILE
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = b""
    except OSError:
        return None
    if len(key) == KEY_BYTES:
        return key
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:  # made meanwhile by another command
        try:
            key = path.read_bytes()
        except OSError:
            return None
        return key if len(key) == KEY_BYTES else None
    except OSError:
        return None
    key = secrets.token_bytes(KEY_BYTES)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    return key


def sign(key: bytes, decision: Mapping[str, Any]) -> str:
    """The signature of a decision: over its stage, decision, note, author and the output it was made on."""
    fields = ("stage", "decision", "note", "by", "fingerprint", "output_sha256")
    message = json.dumps([str(decision.get(name, "")) for name in fields], ensure_ascii=False).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()
