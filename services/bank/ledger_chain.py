"""The ledger's chain: canonical bytes, hashing, signing and sealing of transactions.

* **Hash chain**: ``hash = SHA-256(canonical_bytes(transaction))`` where the canonical bytes are
  the JSON object of every field except ``hash`` and ``signature``, fields that are ``None``
  left out, keys sorted, no whitespace, UTF-8 (``json.dumps(sort_keys=True,
  separators=(",", ":"), ensure_ascii=False)``); it includes ``seq`` and ``prev_hash``. The
  genesis ``prev_hash`` is 64 zeros.
* **Signatures**: every transaction carries the bank's signature (base64) over
  ``b"gridcredit-bank-transaction-v1:" + hash`` (ASCII hex), made by an injected ``sign``.
  Because each hash covers its predecessor, one valid signature authenticates the whole chain
  before it; the audit (``audit.py``) recomputes every hash and verifies signatures at
  checkpoints.
* **Batches**: the transactions one ``ApplyBatch`` request makes are sealed unsigned (``signature``
  empty) except the last of them, which the bank signs (:func:`signed`) before they are stored: its
  signature covers the whole run through the chain, and signing is most of what a ledger operation
  costs (~43 µs of Ed25519 here; 1,000 charges would spend 43 ms on it). So a stored transaction is
  signed or followed by a signed one (the audit checks that the last one is signed); every
  transaction of a single operation is signed.

:func:`seal` is the one place a transaction gets its ``prev_hash``, ``hash`` and ``signature``;
``ledger.execute`` seals each new transaction once its operation has produced it.
"""
from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import json
import operator
from typing import Callable

from gridcredit.errors import invariant

from .types import LedgerHead, Transaction

SIGNING_PREFIX = b"gridcredit-bank-transaction-v1:"

TRANSACTION_FIELDS = tuple(field.name for field in dataclasses.fields(Transaction))
transaction_values = operator.attrgetter(*TRANSACTION_FIELDS)   # a Transaction's values, in field order
_HASHED_FIELDS = tuple(name for name in TRANSACTION_FIELDS if name not in ("hash", "signature"))
_hashed_values = operator.itemgetter(*(TRANSACTION_FIELDS.index(name) for name in _HASHED_FIELDS))
_PREV_HASH, _HASH, _SIGNATURE = (TRANSACTION_FIELDS.index(name) for name in ("prev_hash", "hash", "signature"))

# One encoder for every call: json.dumps with options builds a new encoder each time (audits hash millions).
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_bytes(transaction: Transaction) -> bytes:
    """The exact bytes the hash covers (see the module docstring)."""
    return canonical_bytes_of_values(transaction_values(transaction))


def canonical_bytes_of_values(values) -> bytes:
    """:func:`canonical_bytes` of the transaction with these values (in field order)."""
    body = {name: value.value if isinstance(value, enum.Enum) else value
            for name, value in zip(_HASHED_FIELDS, _hashed_values(values)) if value is not None}
    return _CANONICAL_JSON.encode(body).encode("utf-8")


def transaction_hash(transaction: Transaction) -> str:
    return hashlib.sha256(canonical_bytes(transaction)).hexdigest()


def signing_input(transaction_hash_hex: str) -> bytes:
    return SIGNING_PREFIX + transaction_hash_hex.encode("ascii")


def seal(entry: Transaction, head: LedgerHead,
         sign: Callable[[bytes], bytes] | None) -> tuple[Transaction, LedgerHead]:
    """Chain an unsealed entry to the head, hash and sign it; return it and the new head. ``sign=None``:
    left unsigned, for a later transaction of the same batch to cover (see the module docstring)."""
    invariant(entry.seq == head.seq + 1 and entry.hash == "" and entry.signature == "",
              "seal takes the next unsealed entry")
    values = list(transaction_values(entry))      # one new Transaction (dataclasses.replace costs ~15 µs each)
    values[_PREV_HASH] = head.hash
    digest = hashlib.sha256(canonical_bytes_of_values(values)).hexdigest()
    values[_HASH] = digest
    if sign is not None:
        values[_SIGNATURE] = _signature(digest, sign)
    return Transaction(*values), LedgerHead(seq=entry.seq, hash=digest)


def _signature(digest: str, sign: Callable[[bytes], bytes]) -> str:
    return base64.b64encode(sign(signing_input(digest))).decode("ascii")


def signed(transaction: Transaction, sign: Callable[[bytes], bytes]) -> Transaction:
    """A sealed transaction with the bank's signature over its hash (the hash does not cover it)."""
    invariant(transaction.hash != "" and transaction.signature == "", "signed takes a sealed, unsigned transaction")
    return dataclasses.replace(transaction, signature=_signature(transaction.hash, sign))

