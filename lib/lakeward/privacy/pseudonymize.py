"""Keyed pseudonymization: ``user_key = HMAC-SHA256(key, user_id)`` as a Column.

Spark has no HMAC function, and a Python UDF would move every row through
Python. HMAC is two nested SHA-256 hashes over the key padded and xor-ed with
fixed bytes (RFC 2104), which Spark's ``sha2`` computes natively::

    df.withColumn("user_key", hmac_sha256(F.col("user_id"), key))

The padded key halves are binary literals in the query plan: do not log
``explain()`` output of plans that pseudonymize.
"""

from __future__ import annotations

import hashlib

from pyspark.sql import Column
from pyspark.sql import functions as F

_BLOCK = 64  # SHA-256 block size in bytes
_IPAD = 0x36
_OPAD = 0x5C


def hmac_sha256(value: Column, key: bytes) -> Column:
    """Lower-case hex HMAC-SHA256 of the UTF-8 string ``value``; null stays null."""
    if not key:
        raise ValueError("the HMAC key must not be empty")
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK, b"\x00")
    inner_pad = bytearray(b ^ _IPAD for b in key)
    outer_pad = bytearray(b ^ _OPAD for b in key)
    inner = F.unhex(F.sha2(F.concat(F.lit(inner_pad), value.cast("string").cast("binary")), 256))
    outer = F.sha2(F.concat(F.lit(outer_pad), inner), 256)
    return F.when(value.isNull(), F.lit(None).cast("string")).otherwise(outer)
