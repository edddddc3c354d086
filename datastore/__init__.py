"""The datastore: one async contract (`api.Datastore`) and its backends.

`MemoryDatastore` keeps everything in one process; `EtcdDatastore` talks to etcd v3;
`KubeDatastore` (datastore/kubernetes.py) keeps percale's kinds as custom resources of a
kube-apiserver. Only this package imports a backend's client library.
"""

from percale.datastore.contract import Datastore, Key, KVPair, ListResult, WatchEvent
from percale.datastore.errors import (
    AlreadyExists,
    Conflict,
    DatastoreError,
    DatastoreUnavailable,
    NotFound,
    NotInstalled,
    RevisionCompacted,
    TransactionConflict,
)
from percale.datastore.memory import MemoryDatastore

__all__ = [
    "AlreadyExists", "Conflict", "Datastore", "DatastoreError", "DatastoreUnavailable", "Key",
    "KVPair", "ListResult", "MemoryDatastore", "NotFound", "NotInstalled", "RevisionCompacted",
    "TransactionConflict", "WatchEvent",
]
