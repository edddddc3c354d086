"""The datastore options the long-running programs (percale-node, percale-controllers) share,
spelled as percalectl spells its own (ctl/main.py), so one setting works for all three."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

ConfigFile = Annotated[Optional[str], typer.Option(
    "--config", "-c", help="Datastore config file (default: /etc/percale/percalectl.cfg if it exists)")]
EtcdEndpoints = Annotated[Optional[str], typer.Option(
    help="Comma-separated etcd URLs (env ETCD_ENDPOINTS) (default: http://127.0.0.1:2379)")]
EtcdCACertFile = Annotated[Optional[str], typer.Option(help="CA certificate for etcd TLS (env ETCD_CA_CERT_FILE)")]
EtcdCertFile = Annotated[Optional[str], typer.Option(help="Client certificate for etcd TLS (env ETCD_CERT_FILE)")]
EtcdKeyFile = Annotated[Optional[str], typer.Option(help="Client key for etcd TLS (env ETCD_KEY_FILE)")]
DatastoreType = Annotated[Optional[str], typer.Option(
    help="etcdv3 or kubernetes (env PERCALE_DATASTORE_TYPE) (default: etcdv3)")]
Kubeconfig = Annotated[Optional[str], typer.Option(
    help="kubeconfig for the kubernetes datastore (env KUBECONFIG) (default: ~/.kube/config,"
    " else the pod's service account)")]


def datastore_settings(config: Optional[str], etcd_endpoints: Optional[str],
                       etcd_ca_cert_file: Optional[str], etcd_cert_file: Optional[str],
                       etcd_key_file: Optional[str], datastore_type: Optional[str] = None,
                       kubeconfig: Optional[str] = None) -> dict[str, Optional[str]]:
    """The keyword arguments of percale.datastore.config.load_config."""
    return {"config_file": config, "etcd_endpoints": etcd_endpoints,
            "etcd_ca_cert_file": etcd_ca_cert_file, "etcd_cert_file": etcd_cert_file,
            "etcd_key_file": etcd_key_file, "datastore_type": datastore_type,
            "kubeconfig": kubeconfig}
