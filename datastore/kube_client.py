"""The few Kubernetes API calls the datastore makes, over the `kubernetes` package's asyncio client.

`kubernetes.aio` loads the kubeconfig or the in-cluster service account, holds the TLS context,
the credentials and the connection pool. Its generated per-method wrappers validate every
argument with pydantic and would turn a custom object into a dict anyway, so this module builds
requests with the same client's `param_serialize` and parses the JSON itself: a request costs one
`json.loads` (docs/datastore.md has the measurements).

Failures become the datastore's errors at this one seam: an unreachable or overloaded apiserver
is `DatastoreUnavailable`; any other HTTP error is `KubeError` with its status and message, for
the backend to map (404, 409, 410, 422) to the contract's verdicts.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes.aio import client as kube
from kubernetes.aio.config import kube_config
from kubernetes.aio.config.config_exception import ConfigException
from kubernetes.aio.config.incluster_config import load_incluster_config

from percale.datastore.errors import DatastoreError, DatastoreUnavailable
from percale.datastore.yaml_text import yaml_problem

# Server answers that mean "try again later" rather than "no".
_RETRYABLE = {429, 500, 502, 503, 504}
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


class KubeError(Exception):
    """The apiserver refused a request: `status` is the HTTP code, `reason` its Status reason."""

    def __init__(self, status: int, reason: str, message: str, body: dict[str, Any] | None = None):
        self.status, self.reason, self.body = status, reason, body or {}
        super().__init__(f"{status} {reason}: {message}")


class KubeConfigError(DatastoreError):
    """No usable way to reach the apiserver: the message says which file or setting failed."""


async def configuration(kubeconfig: str | None = None) -> kube.Configuration:
    """The client configuration from a kubeconfig file (the argument, else $KUBECONFIG, else
    ~/.kube/config), or from the pod's service account when running in a cluster."""
    config = kube.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    default = Path.home() / ".kube" / "config"
    try:
        if path is None and not default.exists() and IN_CLUSTER_TOKEN.exists():
            load_incluster_config(client_configuration=config)
            return config
        path = path or str(default)
        if not Path(path).is_file():
            raise KubeConfigError(f"kubeconfig {path}: no such file")
        _check_shape(path)
        await kube_config.load_kube_config(config_file=path, client_configuration=config,
                                           persist_config=False)
    except ConfigException as err:
        raise KubeConfigError(f"kubeconfig {path}: {err}") from None
    return config


def _check_shape(path: str) -> None:
    """KubeConfigError unless the file is YAML with a kubeconfig's top level. The kubernetes
    package reads it again, but would raise yaml's multi-line errors, or a TypeError from deep
    inside for an empty file, a list, or `clusters: 5`."""
    try:
        with open(path, "rb") as stream:
            doc = yaml.safe_load(stream)
    except OSError as err:
        raise KubeConfigError(f"kubeconfig {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise KubeConfigError(f"kubeconfig {path}: not valid YAML: {yaml_problem(err)}") from None
    if not isinstance(doc, dict):
        raise KubeConfigError(f"kubeconfig {path}: not a kubeconfig (no mapping at the top)")
    for section, entry in (("clusters", "cluster"), ("contexts", "context"), ("users", "user")):
        items = doc.get(section) or []
        if not isinstance(items, list):
            raise KubeConfigError(f"kubeconfig {path}: {section} must be a list")
        for n, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get(entry) or {}, dict):
                raise KubeConfigError(f"kubeconfig {path}: {section}[{n}] must be a mapping"
                                      f" with a {entry} mapping")


class KubeClient:
    def __init__(self, config: kube.Configuration, *, timeout: float = 10.0):
        self._api = kube.ApiClient(config)
        self._api.user_agent = "percale"
        self.timeout = timeout

    async def _send(
        self, method: str, path: str, query: Mapping[str, Any] | None, body: Any,
        content_type: str | None, timeout: float | None,
    ) -> kube.rest.RESTResponse:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        _, url, headers, body, _ = await self._api.param_serialize(
            method=method, resource_path=path, query_params=list((query or {}).items()),
            header_params=headers, body=body, auth_settings=["BearerToken"],
        )
        try:
            return await self._api.call_api(method, url, header_params=headers, body=body,
                                            _request_timeout=timeout)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
            raise DatastoreUnavailable(f"the Kubernetes API cannot be reached: {err or type(err).__name__}") from None

    async def request(
        self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
        body: Any = None, content_type: str | None = None,
    ) -> dict[str, Any]:
        """One request; the answer's JSON document, or KubeError/DatastoreUnavailable."""
        response = await self._send(method, path, query, body, content_type, self.timeout)
        try:
            data = await response.read()
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
            raise DatastoreUnavailable(f"the Kubernetes API connection broke: {err}") from None
        if response.status >= 300:
            raise _error(response.status, _status_document(data))
        return json.loads(data) if data else {}

    async def stream(self, path: str, query: Mapping[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """A watch: one JSON document per line until the server ends the stream."""
        # No total timeout: the server ends a watch after its own timeoutSeconds. The connect
        # timeout still applies.
        response = await self._send("GET", path, query, None, None, None)
        raw = response.response
        try:
            if response.status >= 300:
                data = await raw.read()
                raise _error(response.status, _status_document(data))
            async for line in raw.content:
                if line.strip():
                    yield json.loads(line)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
            raise DatastoreUnavailable(f"the Kubernetes watch broke: {err or type(err).__name__}") from None
        finally:
            raw.release()

    async def close(self) -> None:
        await self._api.close()


def _status_document(data: bytes) -> dict[str, Any]:
    """A refusal's body: the apiserver's Status, or for a path it serves nothing at (a group
    whose CRDs are all gone) the plain text "404 page not found" as its message."""
    try:
        doc = json.loads(data) if data else {}
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        return doc
    return {"message": data.decode(errors="replace").strip()[:200]}


def _error(status: int, doc: dict[str, Any]) -> Exception:
    message = doc.get("message") or doc.get("reason") or "no message"
    if status in _RETRYABLE:
        return DatastoreUnavailable(f"the Kubernetes API answered {status}: {message}")
    return KubeError(status, doc.get("reason", ""), message, doc)
