"""Where BGP passwords (BGPPeer `password.secretKeyRef`, BGPConfiguration `nodeMeshPassword`)
come from: one source, chosen once when percale-node starts (`choose`), asked by the agent
(`agent.BGPAgent`) when it configures BGP and in its housekeeping round.

    SecretFiles      `<secrets dir>/<secret>/<key>`, a mounted secret (--secrets-dir given:
                     etcd installs, or anyone who mounts the secrets)
    SecretsFromAPI   the Secret itself, through the Kubernetes API, from the namespace
                     percale-node runs in (the Kubernetes datastore without --secrets-dir), as
                     Calico's confd reads it (confd/pkg/backends/calico/secret_watcher.go)
    NoSecrets        neither: every password is logged as unreadable

Each has the same two calls. `read` is the password, checked (exabgp_config.password_problem),
or None with the reason logged: the session then goes without one, as in Calico, and fails
alone. `version` is what the key holds now, only compared with an earlier one: a secret
changes with no datastore change, so the agent looks again (at least every 10 s) and
configures BGP again when a version differs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import os
import sys
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Protocol

from percale.bgpd.exabgp_config import password_problem
from percale.bgpd.peering import SecretRef

log = logging.getLogger("percale.bgpd")

# The namespace a pod runs in, as Kubernetes writes it beside the service account's token.
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Calico's: calico-node reads its Secrets from $NAMESPACE, else kube-system.
DEFAULT_NAMESPACE = "kube-system"
# How long one look at a Secret may take. The BGP agent looks between its other housekeeping
# (graceful-restart timers, sweeps): an apiserver that does not answer must not hold those up
# for the client's whole timeout per key; the last answer stands meanwhile.
LOOK_SECONDS = 2.0


class SecretSource(Protocol):
    async def read(self, ref: SecretRef) -> str | None:
        """The password the key holds, or None (why logged)."""
        ...

    async def version(self, ref: SecretRef) -> Hashable:
        """What the key holds now, to compare with what it held; logs nothing."""
        ...


def _problem(password: str) -> str | None:
    """Why ExaBGP's configuration (and the kernel) cannot take this password, if they cannot."""
    return password_problem(password) if password else "a BGP password cannot be empty"


def read_secret(secrets_dir: Path | None, ref: SecretRef | None) -> str | None:
    """A BGP password from `<secrets_dir>/<secret name>/<key>` (a mounted Kubernetes secret has
    this layout). One that cannot be read, or that ExaBGP's configuration cannot hold, is logged
    and the session goes without it, as in Calico: it then fails alone, where raising here
    kept every session of the node, mesh included, from being configured."""
    if ref is None:
        return None
    where = f"secret {ref.name!r}, key {ref.key!r}"
    if secrets_dir is None:
        log.error("a BGP password refers to %s, but no secrets directory is set; "
                  "the session goes without a password", where)
        return None
    try:
        password = (secrets_dir / ref.name / ref.key).read_text().strip()
    except (OSError, UnicodeDecodeError) as err:
        log.error("cannot read the BGP password of %s (%s); the session goes without one",
                  where, err)
        return None
    if problem := _problem(password):
        log.error("the BGP password in %s cannot be used (%s); the session goes without one",
                  where, problem)
        return None
    return password


def secret_version(secrets_dir: Path, ref: SecretRef) -> tuple[str, bytes] | None:
    """What a secret's key holds now, to tell whether it changed since: the file its path
    resolves to and the file's content; None when it cannot be read. Kubernetes updates a
    mounted secret by pointing its `..data` symlink at a new directory, so the path stays and
    what it resolves to changes; a file written in place keeps its path and changes content.
    Reads only: read_secret, which logs what is wrong with a password, is left to configuring."""
    path = secrets_dir / ref.name / ref.key
    try:
        return os.path.realpath(path), path.read_bytes()
    except (OSError, ValueError):  # ValueError: a name the file system cannot hold
        return None


class SecretFiles:
    """Mounted secrets: small local files, read synchronously."""

    def __init__(self, secrets_dir: Path):
        self.secrets_dir = secrets_dir

    async def read(self, ref: SecretRef) -> str | None:
        return read_secret(self.secrets_dir, ref)

    async def version(self, ref: SecretRef) -> Hashable:
        return secret_version(self.secrets_dir, ref)


class NoSecrets:
    """No secrets directory and no Kubernetes API (etcd without --secrets-dir)."""

    async def read(self, ref: SecretRef) -> str | None:
        return read_secret(None, ref)

    async def version(self, ref: SecretRef) -> Hashable:
        return None


# What a look at a Secret found, when it found no value (SecretsFromAPI._look).
NO_SECRET, NO_KEY, FORBIDDEN, UNREACHABLE = "no Secret", "no key", "forbidden", "unreachable"


class SecretsFromAPI:
    """Secrets read through the Kubernetes API: GET /api/v1/namespaces/<ns>/secrets/<name>,
    the key's base64 value in `data`. `client` is the datastore's (its `request` raises
    KubeError for a refusal, DatastoreUnavailable when the apiserver cannot answer).

    Each unusable outcome is logged once per Secret key and reason (not at every configuration
    or look), and again only after the key was read fine in between. While the apiserver cannot
    be reached, the last answer it gave stands: a short outage neither drops a password nor
    restarts a session."""

    def __init__(self, client: Any, namespace: str):
        self.client, self.namespace = client, namespace
        self._last: dict[SecretRef, tuple[str, str]] = {}  # the last answer, per key
        self._told: dict[SecretRef, str] = {}  # the reason last logged, per key

    def _path(self, name: str) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets/{name}"

    async def _look(self, ref: SecretRef) -> tuple[str, str]:
        """("value", the key's base64 text), or (a reason, the apiserver's message)."""
        from percale.datastore.errors import DatastoreError
        from percale.datastore.kube_client import KubeError

        try:
            async with asyncio.timeout(LOOK_SECONDS):
                doc = await self.client.request("GET", self._path(ref.name))
        except (DatastoreError, TimeoutError) as err:  # DatastoreUnavailable, mostly
            return self._last.get(ref) or (UNREACHABLE, str(err) or "no answer in time")
        except KubeError as err:
            reason = {404: NO_SECRET, 403: FORBIDDEN}.get(err.status, f"refused ({err.status})")
            found = (reason, str(err))
        else:
            data = doc.get("data") or {}
            found = ("value", data[ref.key]) if ref.key in data else (NO_KEY, "")
        self._last[ref] = found
        return found

    async def version(self, ref: SecretRef) -> Hashable:
        # The key's value, not the Secret's resourceVersion: another key of the same Secret
        # changing is no reason to configure BGP again.
        outcome, detail = await self._look(ref)
        return (outcome, detail) if outcome == "value" else outcome

    async def read(self, ref: SecretRef) -> str | None:
        outcome, detail = await self._look(ref)
        where = f"Secret {self.namespace}/{ref.name}, key {ref.key!r}"
        if outcome == "value":
            try:
                password = base64.b64decode(detail, validate=True).decode().strip()
            except (binascii.Error, UnicodeDecodeError):
                return self._tell(ref, "undecodable", "the BGP password in %s is not UTF-8 text; "
                                  "the session goes without one", where)
            if problem := _problem(password):
                return self._tell(ref, f"unusable: {problem}", "the BGP password in %s cannot "
                                  "be used (%s); the session goes without one", where, problem)
            self._told.pop(ref, None)
            return password
        if outcome == NO_SECRET:
            return self._tell(ref, outcome, "a BGP password refers to %s, and there is no such "
                              "Secret: create it in namespace %s (where percale-node runs); the "
                              "session goes without a password", where, self.namespace)
        if outcome == NO_KEY:
            return self._tell(ref, outcome, "a BGP password refers to %s, and the Secret has no "
                              "such key: add it; the session goes without a password", where)
        if outcome == FORBIDDEN:
            return self._tell(
                ref, outcome, "percale-node may not read %s (%s): create a Role in namespace "
                "%s allowing get on secrets (resourceNames: [%s]) and a RoleBinding of it to "
                "percale-node's service account, as Calico asks for calico-node; the session "
                "goes without a password", where, detail, self.namespace, ref.name)
        return self._tell(ref, outcome, "cannot read the BGP password of %s (%s); the session "
                          "goes without one until it can", where, detail)

    def _tell(self, ref: SecretRef, reason: str, message: str, *args: object) -> None:
        """Log once per key and reason; the password is None."""
        if self._told.get(ref) != reason:
            log.error(message, *args)
            self._told[ref] = reason
        return None


def running_namespace(environ: dict[str, str] | None = None,
                      service_account: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The namespace percale-node runs in: $NAMESPACE (Calico's variable), else the pod's
    service account's namespace, else kube-system (Calico's default)."""
    named = (os.environ if environ is None else environ).get("NAMESPACE", "").strip()
    if named:
        return named
    try:
        return service_account.read_text().strip() or DEFAULT_NAMESPACE
    except OSError:
        return DEFAULT_NAMESPACE


def choose(secrets_dir: Path | None, store: object) -> SecretSource:
    """Files when `secrets_dir` is given; else the Kubernetes API on the Kubernetes datastore;
    else none."""
    if secrets_dir is not None:
        return SecretFiles(secrets_dir)
    # Only a loaded backend module can have made the store: etcd's percale-node does not load
    # the kubernetes package for this.
    kubernetes = sys.modules.get("percale.datastore.kubernetes")
    if kubernetes is not None and isinstance(store, kubernetes.KubeDatastore):
        return SecretsFromAPI(store.client, running_namespace())
    return NoSecrets()
