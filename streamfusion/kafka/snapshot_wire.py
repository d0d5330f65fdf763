"""Model snapshots on the model topic: packing, chunks, signatures, and their validation.

A trainer's snapshot travels through Kafka itself, so scorers on other hosts need nothing but
the broker. One snapshot is

- ``chunks`` chunk messages, each ``CHUNK_MAGIC | header length (4 bytes, big endian) | JSON
  header {"trainer", "version", "index", "count", "sha256"} | bytes``, holding in order the
  zlib-compressed bytes of the scoring model (``pack_model``), at most ``CHUNK_BYTES`` each:
  within the broker's default message size, so no broker setting needs changing;
- then one announcement, a small JSON object: ``{"kind", "format", "trainer", "version",
  "schema", "first_offset", "chunks", "bytes", "raw_bytes", "sha256", "signature"}``, where
  ``first_offset`` is the offset of chunk 0 on the topic, ``sha256`` that of all the
  compressed bytes, ``schema`` a fingerprint of the events' schema, and ``signature`` the
  HMAC-SHA256, under the key of ``--model-key-file``, of the announcement's other fields
  (canonical JSON) followed by the compressed bytes, or null without a key.

Nothing here touches Kafka (``snapshots.py`` does): these functions validate field by field
and raise :class:`BadSnapshot` with a one-line reason for anything that is off, so a scorer
logs it and goes on with the model it has. No path or other pointer outside the topic is
ever read from a message; sizes are bounded before anything is allocated, and decompression
stops at the announced size.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from streamfusion.data.encoder import Encoder
from streamfusion.data.schema import Schema
from streamfusion.kafka.messages import Invalid, load_object
from streamfusion.model_file import model_bytes, model_from_bytes
from streamfusion.online import OnlineModel

KIND = "streamfusion-snapshot"
WIRE_FORMAT = 2  # 2: the payload is a model file (1: the model's whole checkpoint state)
CHUNK_MAGIC = b"SFCHUNK1"
# half the broker's and the producer's default message size (1 MiB): room for the header
# and the record overhead, and no broker setting to change
CHUNK_BYTES = 512 * 1024
# a model file of the default model is a few MB (the learner's touched rows); 1 GiB is no model
# of ours, and it bounds what a hostile announcement can make a scorer allocate
MAX_SNAPSHOT_BYTES = 1 << 30
MAX_CHUNKS = -(-MAX_SNAPSHOT_BYTES // CHUNK_BYTES)
MAX_ANNOUNCEMENT_BYTES = 4096  # an announcement is ~400 bytes of JSON
MAX_CHUNK_HEADER_BYTES = 1024  # a chunk header is ~200 bytes
MAX_TRAINER_CHARS = 64
# versions count snapshots; above 2**53 JSON numbers lose integers (and one announcement of
# 1e300 must never pin the scorers)
MAX_VERSION = 1 << 53
# HMAC-SHA256 keys shorter than 128 bits can be guessed
MIN_KEY_BYTES = 16
ZLIB_LEVEL = 1  # model arrays compress ~3x at level 1; higher levels cost seconds, gain little
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_TRAINER = re.compile(r"[A-Za-z0-9_.:\-]+\Z")


class BadSnapshot(ValueError):
    """An announcement, chunk or snapshot a scorer must not load (the reason in one line)."""


@dataclass(frozen=True)
class Announcement:
    """A validated announcement (see the module docstring for the fields)."""

    trainer: str
    version: int
    schema: str
    first_offset: int
    chunks: int
    bytes: int
    raw_bytes: int
    sha256: str
    signature: str | None

    def signed_part(self) -> bytes:
        """The canonical JSON of every field but the signature (what the HMAC covers)."""
        d = asdict(self)
        d.pop("signature")
        return json.dumps({"kind": KIND, "format": WIRE_FORMAT, **d}, sort_keys=True,
                          separators=(",", ":")).encode()

    def to_bytes(self) -> bytes:
        """The message value."""
        return json.dumps({"kind": KIND, "format": WIRE_FORMAT, **asdict(self)},
                          sort_keys=True).encode()


def read_key(path: str | Path) -> bytes:
    """The HMAC key in ``path`` (surrounding whitespace removed); ``ValueError`` when it
    cannot be read or is too short."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"--model-key-file {path}: {exc.strerror}") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"--model-key-file {path}: the key has {len(key)} bytes, at least "
                         f"{MIN_KEY_BYTES} are needed")
    return key


def schema_fingerprint(schema: Schema) -> str:
    """A short, stable name of a schema: the SHA-256 of its canonical JSON."""
    text = json.dumps(schema.to_dict(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- the model
def pack_model(model: OnlineModel, encoder: Encoder) -> bytes:
    """The bytes of the scoring model: a model file (``streamfusion.model_file``: live trees,
    learner weights, encoder; no optimizer moments, window or pending refit)."""
    return model_bytes(model, encoder)


def unpack_model(raw: bytes) -> tuple[OnlineModel, Encoder]:
    """The model and encoder of ``pack_model``'s bytes; ``BadSnapshot`` when malformed. The
    encoder counts on from the trainer's tables, as the scorer's own would."""
    try:
        saved = model_from_bytes(raw, "model snapshot", MAX_SNAPSHOT_BYTES)
        return saved.model, saved.learning_encoder()
    except Exception as exc:  # noqa: BLE001 - whatever a foreign state does, refuse it
        raise BadSnapshot(f"malformed model snapshot ({type(exc).__name__}: "
                          f"{str(exc)[:200]})") from None


# --------------------------------------------------------------------------- trainer side
def compress(raw: bytes) -> bytes:
    """What the chunks hold, refused beyond ``MAX_SNAPSHOT_BYTES`` (the scorers would)."""
    if len(raw) > MAX_SNAPSHOT_BYTES:
        raise BadSnapshot(f"the model packs to {len(raw)} bytes, more than scorers accept "
                          f"({MAX_SNAPSHOT_BYTES})")
    return zlib.compress(raw, ZLIB_LEVEL)


def chunk_messages(trainer: str, version: int, blob: bytes) -> list[bytes]:
    """The chunk messages of compressed bytes ``blob``."""
    count = max(1, -(-len(blob) // CHUNK_BYTES))
    out = []
    for i in range(count):
        data = blob[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES]
        head = json.dumps({"trainer": trainer, "version": version, "index": i,
                           "count": count, "sha256": hashlib.sha256(data).hexdigest()},
                          sort_keys=True).encode()
        out.append(CHUNK_MAGIC + struct.pack(">I", len(head)) + head + data)
    return out


def announce(trainer: str, version: int, schema: Schema, first_offset: int, blob: bytes,
             raw_bytes: int, key: bytes | None) -> Announcement:
    """The announcement of a snapshot whose chunks start at ``first_offset``, signed with
    ``key`` when there is one."""
    note = Announcement(trainer, version, schema_fingerprint(schema), first_offset,
                        max(1, -(-len(blob) // CHUNK_BYTES)), len(blob), raw_bytes,
                        hashlib.sha256(blob).hexdigest(), None)
    if key is None:
        return note
    return Announcement(**{**asdict(note), "signature": sign(key, note, blob)})


def sign(key: bytes, note: Announcement, blob: bytes) -> str:
    """HMAC-SHA256 of the announcement's fields and the compressed bytes, hex."""
    mac = hmac.new(key, note.signed_part(), hashlib.sha256)
    mac.update(blob)
    return mac.hexdigest()


# --------------------------------------------------------------------------- scorer side
def _int(obj: dict, name: str, low: int, high: int) -> int:
    v = obj.get(name)
    if type(v) is not int or not low <= v <= high:
        raise BadSnapshot(f"announcement field {name!r} must be an integer in "
                          f"{low}..{high}, got {_shown(v)}")
    return v


def _shown(v: Any) -> str:
    return f"a {type(v).__name__}" if isinstance(v, (dict, list)) else repr(v)[:40]


def parse_announcement(value: bytes | None) -> Announcement:
    """Validate an announcement field by field; ``BadSnapshot`` with the first fault."""
    try:
        obj = load_object(value, max_bytes=MAX_ANNOUNCEMENT_BYTES)
    except Invalid as exc:
        raise BadSnapshot(f"announcement is {exc}") from None
    if obj.get("kind") != KIND or obj.get("format") != WIRE_FORMAT:
        raise BadSnapshot(f"not a snapshot announcement of format {WIRE_FORMAT} (kind "
                          f"{_shown(obj.get('kind'))}, format {_shown(obj.get('format'))})")
    unknown = set(obj) - {"kind", "format", *Announcement.__dataclass_fields__}
    if unknown:
        raise BadSnapshot(f"announcement has unknown fields {sorted(unknown)[:5]}")
    trainer = obj.get("trainer")
    if type(trainer) is not str or not 0 < len(trainer) <= MAX_TRAINER_CHARS \
            or not _TRAINER.match(trainer):
        raise BadSnapshot(f"announcement field 'trainer' must be 1..{MAX_TRAINER_CHARS} "
                          f"letters, digits or _.:- , got {_shown(trainer)}")
    for name in ("schema", "sha256"):
        if type(obj.get(name)) is not str or not _HEX64.match(obj[name]):
            raise BadSnapshot(f"announcement field {name!r} must be 64 hex digits, got "
                              f"{_shown(obj.get(name))}")
    signature = obj.get("signature")
    if signature is not None and (type(signature) is not str or not _HEX64.match(signature)):
        raise BadSnapshot(f"announcement field 'signature' must be null or 64 hex digits, "
                          f"got {_shown(signature)}")
    note = Announcement(
        trainer=trainer, version=_int(obj, "version", 1, MAX_VERSION), schema=obj["schema"],
        first_offset=_int(obj, "first_offset", 0, 1 << 62),
        chunks=_int(obj, "chunks", 1, MAX_CHUNKS),
        bytes=_int(obj, "bytes", 1, MAX_SNAPSHOT_BYTES),
        raw_bytes=_int(obj, "raw_bytes", 1, MAX_SNAPSHOT_BYTES),
        sha256=obj["sha256"], signature=signature)
    if note.chunks != -(-note.bytes // CHUNK_BYTES):
        raise BadSnapshot(f"announcement says {note.chunks} chunks for {note.bytes} bytes")
    return note


def is_chunk(value: bytes | None) -> bool:
    """Whether a model-topic message is a chunk (else it should be an announcement)."""
    return type(value) is bytes and value.startswith(CHUNK_MAGIC)


def parse_chunk(value: bytes | None, note: Announcement, index: int) -> bytes:
    """The bytes of chunk ``index`` of the snapshot ``note`` announces, checked."""
    if not is_chunk(value):
        raise BadSnapshot(f"chunk {index} of snapshot {note.version} is missing")
    start = len(CHUNK_MAGIC) + 4
    (hlen,) = struct.unpack(">I", value[len(CHUNK_MAGIC):start]) if len(value) >= start \
        else (0,)
    if not 0 < hlen <= MAX_CHUNK_HEADER_BYTES or len(value) < start + hlen:
        raise BadSnapshot(f"chunk {index} of snapshot {note.version} has a malformed header")
    try:
        head = load_object(value[start:start + hlen], max_bytes=MAX_CHUNK_HEADER_BYTES)
    except Invalid as exc:
        raise BadSnapshot(f"chunk {index} header is {exc}") from None
    data = value[start + hlen:]
    expected = {"trainer": note.trainer, "version": note.version, "index": index,
                "count": note.chunks}
    for name, want in expected.items():
        if head.get(name) != want or type(head.get(name)) is not type(want):
            raise BadSnapshot(f"chunk {index} of snapshot {note.version}: {name} is "
                              f"{_shown(head.get(name))}, expected {want!r}")
    if len(data) > CHUNK_BYTES or head.get("sha256") != hashlib.sha256(data).hexdigest():
        raise BadSnapshot(f"chunk {index} of snapshot {note.version} is corrupt "
                          "(checksum mismatch)")
    return data


def verify(note: Announcement, blob: bytes, key: bytes | None) -> None:
    """Check the compressed bytes against the announcement, and its signature with ``key``
    (without a key the signature is not checked: the caller warned)."""
    if len(blob) != note.bytes or hashlib.sha256(blob).hexdigest() != note.sha256:
        raise BadSnapshot(f"snapshot {note.version} is corrupt (size or checksum mismatch)")
    if key is None:
        return
    if note.signature is None:
        raise BadSnapshot(f"snapshot {note.version} is not signed")
    if not hmac.compare_digest(sign(key, note, blob), note.signature):
        raise BadSnapshot(f"snapshot {note.version} has a wrong signature")


def decompress(note: Announcement, blob: bytes) -> bytes:
    """The packed model, inflated to at most the announced size (no zip bomb)."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(blob, note.raw_bytes)
    except zlib.error as exc:
        raise BadSnapshot(f"snapshot {note.version} does not decompress ({exc})") from None
    if len(raw) != note.raw_bytes or d.unconsumed_tail or not d.eof:
        raise BadSnapshot(f"snapshot {note.version} inflates to other than the announced "
                          f"{note.raw_bytes} bytes")
    return raw
