"""How a resource is stored: JSON of its wire form, without the revision (the store owns that)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from pydantic import ValidationError

from percale.datastore.errors import DatastoreError
from percale.api import KINDS, Resource
from percale.api.meta import explained
from percale.api.fields import format_time

# Stored values are read as Calico's Go structs read theirs: a field this version does not know is
# dropped, not refused. A newer percale (a node upgraded first in a rolling upgrade, a newer
# percalectl) may store fields an older node has never heard of, and refusing them would blind
# that node to the whole object (its view tells it as deleted). What a user writes is still held
# to the known fields (api.meta.Model's extra="forbid"): a typo must not vanish silently.
READ_EXTRA = "ignore"
# And a check that only new input is held to (api.meta.written) is skipped: a value stored
# before percale refused it must not vanish from every view on upgrade.
READ_CONTEXT = {"stored": True}


def encode(value: Resource) -> bytes:
    """The wire form (Resource.to_document) as compact JSON, fields in the models' order, as
    Calico's Go structs write theirs. pydantic's own serializer writes it: a full /26 block (13
    kB, rewritten by every allocation) in 30 us, where to_document and json.dumps took 140."""
    # The store owns the revision.
    left_out = {"resource_version", *value.empty_maps()}
    return value.model_dump_json(by_alias=True, exclude_none=True,
                                 exclude={"metadata": left_out}).encode()


def decode(kind: str, data: bytes, revision: str) -> Resource:
    """The resource stored as `data` at `revision`. Raises DatastoreError saying what is wrong
    (a lazily decoded KVPair adds which object it is)."""
    # Stored values were validated when they were written; validating again on read keeps a
    # hand-edited or corrupt value from travelling further as if it were sound.
    try:
        value = KINDS[kind].model_validate_json(data, extra=READ_EXTRA, context=READ_CONTEXT)
    except ValidationError as err:
        raise DatastoreError(f"the value stored is not a valid {kind}: {explained(err)}") from None
    value.metadata.resource_version = revision
    return value


def stamped_for_create(value: Resource) -> Resource:
    """A copy carrying the identity a new object gets: a fresh uid and its creation time."""
    meta = value.metadata.model_copy(
        update={
            "uid": str(uuid.uuid4()),
            "creation_timestamp": format_time(datetime.now(timezone.utc)),
            "resource_version": None,
        }
    )
    return value.model_copy(update={"metadata": meta})


def with_revision(value: Resource, revision: str) -> Resource:
    """`value` as stored at `revision`: what a write returns, without decoding what it encoded."""
    meta = value.metadata.model_copy(update={"resource_version": revision})
    return value.model_copy(update={"metadata": meta})
