"""Which datastore to use and how to reach it, from a config file, the environment and flags.

Later sources win: built-in defaults (etcd on 127.0.0.1:2379), then the config file
(`/etc/percale/percalectl.cfg` if present, or the one named), then environment variables
(PERCALE_DATASTORE_TYPE, ETCD_ENDPOINTS, ETCD_CA_CERT_FILE, ETCD_CERT_FILE, ETCD_KEY_FILE,
KUBECONFIG), then command-line flags. The file has calicoctl.cfg's shape:

    apiVersion: percale.io/v1
    kind: PercaleAPIConfig
    spec:
      datastoreType: etcdv3
      etcdEndpoints: https://10.0.0.1:2379,https://10.0.0.2:2379
      etcdCACertFile: /etc/percale/etcd-ca.pem
      etcdCertFile: /etc/percale/etcd-client.pem
      etcdKeyFile: /etc/percale/etcd-client-key.pem

or, for the Kubernetes datastore (custom resources; without a kubeconfig, $KUBECONFIG, then
~/.kube/config, then the pod's service account):

    spec:
      datastoreType: kubernetes
      kubeconfig: /etc/percale/kubeconfig
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

from percale.datastore.contract import Datastore
from percale.datastore.etcd_client import TLSFiles

DEFAULT_CONFIG_FILE = Path("/etc/percale/percalectl.cfg")
DATASTORE_TYPES = ("etcdv3", "kubernetes")

_FILE_FIELDS = {
    "datastoreType": "datastore_type",
    "etcdEndpoints": "etcd_endpoints",
    "etcdCACertFile": "etcd_ca_cert_file",
    "etcdCertFile": "etcd_cert_file",
    "etcdKeyFile": "etcd_key_file",
    "kubeconfig": "kubeconfig",
}
_ENV_FIELDS = {
    "PERCALE_DATASTORE_TYPE": "datastore_type",
    "ETCD_ENDPOINTS": "etcd_endpoints",
    "ETCD_CA_CERT_FILE": "etcd_ca_cert_file",
    "ETCD_CERT_FILE": "etcd_cert_file",
    "ETCD_KEY_FILE": "etcd_key_file",
    "KUBECONFIG": "kubeconfig",
}


class ConfigError(ValueError):
    """The datastore settings are wrong; the message names the setting and its source."""


@dataclass(frozen=True)
class DatastoreConfig:
    datastore_type: str = "etcdv3"
    etcd_endpoints: str = "http://127.0.0.1:2379"
    etcd_ca_cert_file: str | None = None
    etcd_cert_file: str | None = None
    etcd_key_file: str | None = None
    kubeconfig: str | None = None

    @property
    def endpoints(self) -> list[str]:
        return [e.strip() for e in self.etcd_endpoints.split(",") if e.strip()]

    def check(self) -> DatastoreConfig:
        if self.datastore_type not in DATASTORE_TYPES:
            raise ConfigError(
                f"datastore type {self.datastore_type!r} is not supported; "
                f"use one of: {', '.join(DATASTORE_TYPES)}"
            )
        if self.datastore_type == "kubernetes":
            if self.kubeconfig and not Path(self.kubeconfig).is_file():
                raise ConfigError(f"kubeconfig {self.kubeconfig}: no such file")
            return self
        if not self.endpoints:
            raise ConfigError("etcdEndpoints is empty")
        if bool(self.etcd_cert_file) != bool(self.etcd_key_file):
            raise ConfigError("etcdCertFile and etcdKeyFile must be given together")
        for name in ("etcd_ca_cert_file", "etcd_cert_file", "etcd_key_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{name.replace('_', '-')} {path}: no such file")
        return self


def _from_file(path: Path) -> dict[str, str]:
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    spec = doc.get("spec") if isinstance(doc, dict) else None
    if not isinstance(spec, dict):
        raise ConfigError(f"config file {path} has no spec mapping")
    unknown = set(spec) - set(_FILE_FIELDS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown field spec.{sorted(unknown)[0]}")
    return {_FILE_FIELDS[k]: str(v) for k, v in spec.items() if v is not None}


def load_config(
    config_file: str | None = None,
    environ: Mapping[str, str] = os.environ,
    **flags: str | None,
) -> DatastoreConfig:
    config = DatastoreConfig()
    path = Path(config_file) if config_file else DEFAULT_CONFIG_FILE
    if config_file or path.exists():
        config = replace(config, **_from_file(path))
    config = replace(config, **{f: environ[e] for e, f in _ENV_FIELDS.items() if environ.get(e)})
    known = {f.name for f in fields(DatastoreConfig)}
    config = replace(config, **{k: v for k, v in flags.items() if v and k in known})
    return config.check()


def open_datastore(config: DatastoreConfig) -> Datastore:
    if config.datastore_type == "kubernetes":
        from percale.datastore.kubernetes import KubeDatastore

        return KubeDatastore(config.kubeconfig)
    from percale.datastore.etcd import EtcdDatastore

    tls = None
    if config.etcd_ca_cert_file or config.etcd_cert_file:
        tls = TLSFiles(config.etcd_ca_cert_file, config.etcd_cert_file, config.etcd_key_file)
    return EtcdDatastore(config.endpoints, tls=tls)
