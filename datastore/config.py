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

Every field is a string: several etcd endpoints are one comma-separated string, as calicoctl.cfg
writes them. An endpoint is http://host[:port], https://host[:port], unix:///path/to/socket, or a
bare host[:port] (http).

A wrong setting is a ConfigError that names it as the user wrote it (`--etcd-endpoints`,
`ETCD_ENDPOINTS`, or `spec.etcdEndpoints` in the config file) and says what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

from percale.datastore.contract import Datastore
from percale.datastore.etcd_client import TLSFiles, channel_target
from percale.datastore.yaml_text import yaml_problem

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

    def check(self, given_as: Mapping[str, str] | None = None) -> DatastoreConfig:
        """This configuration, or ConfigError for the first wrong setting. `given_as` says how
        the user spelt each field (load_config knows: a flag, a variable or a file's field);
        a field it does not name goes by its config file name."""
        if self.datastore_type not in DATASTORE_TYPES:
            raise ConfigError(
                f"datastore type {self.datastore_type!r} is not supported; "
                f"use one of: {', '.join(DATASTORE_TYPES)}"
            )
        if self.datastore_type == "kubernetes":
            if self.kubeconfig and not Path(self.kubeconfig).is_file():
                raise ConfigError(f"kubeconfig {self.kubeconfig}: no such file")
            return self
        endpoints_name = (given_as or {}).get("etcd_endpoints", "etcdEndpoints")
        if not self.endpoints:
            raise ConfigError(f"{endpoints_name} is empty")
        for endpoint in self.endpoints:
            try:
                channel_target(endpoint)
            except ValueError as err:
                raise ConfigError(f"{endpoints_name}: {endpoint!r}: {err}") from None
        if bool(self.etcd_cert_file) != bool(self.etcd_key_file):
            raise ConfigError("etcdCertFile and etcdKeyFile must be given together")
        for name in ("etcd_ca_cert_file", "etcd_cert_file", "etcd_key_file"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{name.replace('_', '-')} {path}: no such file")
        return self


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    return {dict: "a mapping", list: "a list"}.get(type(value), f"a {type(value).__name__}")


def _from_file(path: Path) -> dict[str, str]:
    try:
        # Bytes, so that a file that is no text is a YAML error rather than a UnicodeDecodeError.
        doc = yaml.safe_load(path.read_bytes())
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(err)}") from None
    spec = doc.get("spec") if isinstance(doc, dict) else None
    if not isinstance(spec, dict):
        raise ConfigError(f"config file {path} has no spec mapping")
    unknown = set(spec) - set(_FILE_FIELDS)
    if unknown:
        raise ConfigError(f"config file {path}: unknown field spec.{sorted(map(str, unknown))[0]}")
    for key, value in spec.items():
        # str() of a list reads as one endpoint "['a', 'b']"; of true, as a file named "True".
        if value is not None and not isinstance(value, str):
            hint = ""
            if key == "etcdEndpoints" and isinstance(value, list):
                joined = ",".join(map(str, value))
                hint = f" (several endpoints are one comma-separated string: {joined})"
            raise ConfigError(f"config file {path}: spec.{key} must be a string, not"
                              f" {_kind(value)}{hint}")
    return {_FILE_FIELDS[k]: v for k, v in spec.items() if v is not None}


def load_config(
    config_file: str | None = None,
    environ: Mapping[str, str] = os.environ,
    **flags: str | None,
) -> DatastoreConfig:
    config = DatastoreConfig()
    # How the user spelt each setting that is not a default, for check()'s messages.
    given_as: dict[str, str] = {}
    path = Path(config_file) if config_file else DEFAULT_CONFIG_FILE
    if config_file or path.exists():
        from_file = _from_file(path)
        config = replace(config, **from_file)
        given_as |= {f: f"config file {path}: spec.{k}"
                     for k, f in _FILE_FIELDS.items() if f in from_file}
    from_env = {f: environ[e] for e, f in _ENV_FIELDS.items() if environ.get(e)}
    config = replace(config, **from_env)
    given_as |= {f: e for e, f in _ENV_FIELDS.items() if f in from_env}
    known = {f.name for f in fields(DatastoreConfig)}
    from_flags = {k: v for k, v in flags.items() if v and k in known}
    config = replace(config, **from_flags)
    given_as |= {f: f"--{f.replace('_', '-')}" for f in from_flags}
    return config.check(given_as)


def open_datastore(config: DatastoreConfig) -> Datastore:
    if config.datastore_type == "kubernetes":
        from percale.datastore.kubernetes import KubeDatastore

        return KubeDatastore(config.kubeconfig)
    from percale.datastore.etcd import EtcdDatastore

    tls = None
    if config.etcd_ca_cert_file or config.etcd_cert_file:
        tls = TLSFiles(config.etcd_ca_cert_file, config.etcd_cert_file, config.etcd_key_file)
    return EtcdDatastore(config.endpoints, tls=tls)
