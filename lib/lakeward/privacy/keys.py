"""The pseudonymization secret: where it comes from and what happens without it.

The HMAC key comes from an environment variable (``LAKEWARD_PII_KEY`` by
default). Local work may generate one under the data root, once, and says so on
stderr; other environments refuse to start without it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from functools import cache
from pathlib import Path

from lakeward.config import ConfigError, Settings

log = logging.getLogger(__name__)

KEY_FILE = "pii.key"
MIN_KEY_BYTES = 16

# The key files this process generated, with their keys: a run refused because
# silver's rows were written under another key takes its new file away again.
_generated: dict[Path, bytes] = {}


class MissingKeyError(ConfigError):
    """No usable pseudonymization key where one is required: a configuration error (exit 2)."""


def pii_key(settings: Settings) -> bytes:
    """Return the HMAC key for user_key.

    >>> pii_key(load_settings("local"))  # doctest: +SKIP
    b'...'
    """
    key = _key_from_environment(settings)
    if key is not None:
        return key
    return _local_key(settings.data_root / KEY_FILE, settings.privacy.pii_key_env)


def fingerprint(key: bytes) -> str:
    """A short public mark of ``key``: equal for equal keys, and it reveals nothing of a random key.

    Silver records it with every batch, so a run with another key (which would
    give every person a second ``user_key``) is refused.
    """
    return hmac.new(key, b"lakeward pseudonymization key fingerprint", hashlib.sha256).hexdigest()[:16]


def check_key(settings: Settings) -> None:
    """Raise ``MissingKeyError`` now where :func:`pii_key` would; nothing is generated or written.

    The key is generated where it is first used, by silver: a run that stops
    before (a busy data root, a bronze-only run) leaves no new key behind.
    """
    if _key_from_environment(settings) is None:
        path = settings.data_root / KEY_FILE
        if path.exists():
            _read_key_file(path)


def _key_from_environment(settings: Settings) -> bytes | None:
    """The key the environment gives; None where a local key may stand in for a missing one."""
    variable = settings.privacy.pii_key_env
    value = os.environ.get(variable)
    if value:
        key = value.encode("utf-8")
        if len(key) < MIN_KEY_BYTES:
            if not settings.privacy.generate_key_if_missing:
                raise MissingKeyError(
                    f"{variable} is set but shorter than {MIN_KEY_BYTES} bytes, which the "
                    f"{settings.env} environment refuses; use a long random secret"
                )
            _warn_short_once(variable, len(key))
        return key
    if not settings.privacy.generate_key_if_missing:
        raise MissingKeyError(
            f"{variable} is not set; the {settings.env} environment requires the "
            "pseudonymization key from the environment"
        )
    return None


@cache
def _warn_short_once(variable: str, length: int) -> None:
    # Local work may use a short known key (tests and demos check user_key against their
    # own HMAC). Anyone who reads ops.silver_batches can test guesses against the key's
    # fingerprint there, and then re-identify users, so environments that may not
    # generate a key refuse short ones.
    log.warning(
        "%s is %d bytes long, shorter than %d: it can be guessed from the key fingerprint in the "
        "silver ledger; use a long random key outside tests", variable, length, MIN_KEY_BYTES,
    )


def _local_key(path: Path, variable: str) -> bytes:
    if path.exists():
        return _read_key_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode("ascii")
    # Written whole under a name of its own (owner-only before any secret is in it), then
    # linked into place: a process starting at the same time either wins the link or
    # reads the complete key of the one that did, never a half-written file.
    draft = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        os.link(draft, path)
    except FileExistsError:
        return _read_key_file(path)
    finally:
        draft.unlink(missing_ok=True)
    _generated[path] = key
    log.warning("%s is not set: generated a local pseudonymization key at %s", variable, path)
    return key


def withdraw_generated_key(settings: Settings, refused: bytes) -> Path | None:
    """Remove the key file under the data root if this process generated it with the ``refused`` key.

    Its path, or None when it did not (the file holds another key, or came from
    elsewhere). For a run refused because silver's rows were written under
    another key: the file was missing, and the key that belongs there is that
    other one.
    """
    path = settings.data_root / KEY_FILE
    if _generated.get(path) != refused:
        return None
    try:
        if path.read_bytes().strip() != refused:
            return None
        path.unlink()
        del _generated[path]
    except FileNotFoundError:
        return None
    return path


def _read_key_file(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if len(key) < MIN_KEY_BYTES:
        raise MissingKeyError(
            f"{path} holds {len(key)} bytes, fewer than {MIN_KEY_BYTES}: too short to keep user_keys "
            "secret, and not a key lakeward made; put a long random key there (the silver tables are "
            "then made again with it, see the README) or set the key's environment variable"
        )
    return key
