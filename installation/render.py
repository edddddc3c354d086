"""render(spec) -> the Kubernetes objects that install percale, as the tigera operator renders
calico-node (kubernetes.md §B4, calico.md §6.2). Pure: an effective spec in (with_defaults),
plain dicts out, the same every time, so golden files can hold them.

    Namespace percale-system, ServiceAccounts, ClusterRoles and bindings, the admission policy
        (installation/rbac.py, also manifests/rbac.yaml)
    ConfigMap percale-cni-config      the CNI settings the init container installs
    DaemonSet percale-node            hostNetwork, privileged, every taint tolerated, rolling
    Deployment percale-controllers    IPAM garbage collection, one replica
    IPPools                           the entries of `ipPools` (`pools()`); installation/pools.py
                                      decides which to create, update or retire

A change to the CNI settings changes the DaemonSet's pod template (a hash annotation), so the
pods roll, as tigera rolls them on a cni-config change.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import Any

from percale.installation.model import InstallationSpec, NodeAddressAutodetection, ip_pool
from percale.installation.rbac import NAMESPACE, rbac_objects

NODE_IMAGE, CONTROLLERS_IMAGE = "percale/node", "percale/node"
HEALTH_PORT = 9099
# percale-controllers' /metrics: Calico kube-controllers' default prometheusMetricsPort.
CONTROLLERS_METRICS_PORT = 9094
CNI_CONFIG = "percale-cni-config"


def registry_prefix(registry: str | None) -> str:
    """What goes before an image's name, as tigera reads `registry` (kubernetes.md §B1): it ends
    with "/", added when left out ("quay.io" rendered "quay.iopercale/node"), and "UseDefault"
    means the default registry, which for percale is none (Docker Hub)."""
    if not registry or registry == "UseDefault":
        return ""
    return registry if registry.endswith("/") else f"{registry}/"


def image(spec: InstallationSpec, name: str, version: str) -> str:
    return f"{registry_prefix(spec.registry)}{name}:{version}"


def autodetection_method(method: NodeAddressAutodetection | None) -> str | None:
    """Calico's IP_AUTODETECTION_METHOD for a detection setting; None when there is none."""
    if method is None:
        return None
    if method.interface:
        return f"interface={method.interface}"
    if method.skip_interface:
        return f"skip-interface={method.skip_interface}"
    if method.can_reach:
        return f"can-reach={method.can_reach}"
    if method.cidrs:
        return "cidr=" + ",".join(method.cidrs)
    if method.kubernetes:
        return "kubernetes-internal-ip"
    if method.first_found:
        return "first-found"
    return None


def _meta(name: str, namespaced: bool = True, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "percale", **labels}}
    if namespaced:
        meta["namespace"] = NAMESPACE
    return meta


def cni_config(spec: InstallationSpec) -> dict[str, Any]:
    """The CNI settings, the families a pod gets among them: those the Installation has pools
    of, as tigera writes assign_ipv4 and assign_ipv6 into the conflist (IPv4 alone when it has
    none, the CNI plugin's own default)."""
    network = spec.calico_network
    families = _pool_families(spec)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(CNI_CONFIG),
            "data": {"mtu": str(network.mtu or 0), "cniVersion": "1.0.0",
                     "binDir": "/opt/cni/bin", "confDir": "/etc/cni/net.d",
                     "assignIPv4": "true" if 4 in families or not families else "false",
                     "assignIPv6": "true" if 6 in families else "false"}}


def _pool_families(spec: InstallationSpec) -> set[int]:
    return {ipaddress.ip_network(pool.cidr, strict=False).version
            for pool in spec.calico_network.ip_pools or []}


def _address_env(variable: str, setting: NodeAddressAutodetection | None) -> list[dict[str, Any]]:
    """IP or IP6 for percale-node, as tigera renders them for calico-node: a detection method, or
    none without one (no setting, or one naming no method: tigera's "detection disabled, the
    address is written on the Node by hand"), which keeps the Node's address as it is."""
    method = autodetection_method(setting)
    if method:
        return [{"name": variable, "value": "autodetect"},
                {"name": f"{variable}_AUTODETECTION_METHOD", "value": method}]
    return [{"name": variable, "value": "none"}]


def _node_env(spec: InstallationSpec) -> list[dict[str, Any]]:
    network = spec.calico_network
    v4 = autodetection_method(network.node_address_autodetection_v4)
    env: list[dict[str, Any]] = [
        {"name": "PERCALE_DATASTORE_TYPE", "value": "kubernetes"},
        {"name": "NODENAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "PERCALE_NETWORKING_BACKEND", "value": "bgp" if network.bgp == "Enabled" else "vxlan"},
        *_address_env("IP", network.node_address_autodetection_v4),
        *_address_env("IP6", network.node_address_autodetection_v6),
    ]
    if network.bgp == "Enabled" and not v4:
        env.append({"name": "PERCALE_ROUTER_ID", "value": "hash"})
    env.append({"name": "PERCALE_HEALTH_LISTEN", "value": f"127.0.0.1:{HEALTH_PORT}"})
    return env


def _host_path(name: str, path: str, kind: str = "DirectoryOrCreate") -> dict[str, Any]:
    return {"name": name, "hostPath": {"path": path, "type": kind}}


def node_daemonset(spec: InstallationSpec, version: str) -> dict[str, Any]:
    settings_hash = hashlib.sha256(json.dumps(cni_config(spec)["data"], sort_keys=True).encode()).hexdigest()[:16]
    strategy: dict[str, Any] = {"type": spec.node_update_strategy.type}
    if spec.node_update_strategy.rolling_update is not None:
        strategy["rollingUpdate"] = {"maxUnavailable": spec.node_update_strategy.rolling_update.max_unavailable}
    probe = {"httpGet": {"host": "127.0.0.1", "port": HEALTH_PORT}, "periodSeconds": 10,
             "timeoutSeconds": 5}
    pod: dict[str, Any] = {
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "serviceAccountName": "percale-node",
        "priorityClassName": "system-node-critical",
        "terminationGracePeriodSeconds": 10,
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                        {"effect": "NoSchedule", "operator": "Exists"},
                        {"effect": "NoExecute", "operator": "Exists"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "initContainers": [{
            "name": "install-cni",
            "image": image(spec, NODE_IMAGE, version),
            "command": ["percalectl", "cni", "install"],
            "args": ["--node-name", "$(NODENAME)", "--mtu", "$(CNI_MTU)",
                     "--cni-version", "$(CNI_VERSION)",
                     "--assign-ipv4", "$(CNI_ASSIGN_IPV4)", "--assign-ipv6", "$(CNI_ASSIGN_IPV6)",
                     "--bin-dir", "/host/opt/cni/bin", "--conf-dir", "/host/etc/cni/net.d"],
            "env": [
                {"name": "NODENAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "CNI_MTU", "valueFrom": {"configMapKeyRef": {"name": CNI_CONFIG, "key": "mtu"}}},
                {"name": "CNI_VERSION", "valueFrom": {"configMapKeyRef": {"name": CNI_CONFIG, "key": "cniVersion"}}},
                {"name": "CNI_ASSIGN_IPV4", "valueFrom": {"configMapKeyRef": {"name": CNI_CONFIG, "key": "assignIPv4"}}},
                {"name": "CNI_ASSIGN_IPV6", "valueFrom": {"configMapKeyRef": {"name": CNI_CONFIG, "key": "assignIPv6"}}},
            ],
            "securityContext": {"privileged": True},
            "volumeMounts": [{"name": "cni-bin-dir", "mountPath": "/host/opt/cni/bin"},
                             {"name": "cni-net-dir", "mountPath": "/host/etc/cni/net.d"}],
        }],
        "containers": [{
            "name": "percale-node",
            "image": image(spec, NODE_IMAGE, version),
            "command": ["percale-node"],
            "env": _node_env(spec),
            "securityContext": {"privileged": True},
            "livenessProbe": {**probe, "httpGet": {**probe["httpGet"], "path": "/livez"},
                              "initialDelaySeconds": 10, "failureThreshold": 6},
            "readinessProbe": {**probe, "httpGet": {**probe["httpGet"], "path": "/readyz"}},
            "volumeMounts": [{"name": "var-run-percale", "mountPath": "/var/run/percale"},
                             {"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True},
                             {"name": "var-run-netns", "mountPath": "/var/run/netns",
                              "mountPropagation": "HostToContainer"}],
        }],
        "volumes": [_host_path("var-run-percale", "/var/run/percale"),
                    _host_path("lib-modules", "/lib/modules", "Directory"),
                    _host_path("var-run-netns", "/var/run/netns"),
                    _host_path("cni-bin-dir", "/opt/cni/bin"),
                    _host_path("cni-net-dir", "/etc/cni/net.d")],
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    labels = {"app.kubernetes.io/name": "percale-node"}
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": _meta("percale-node", **labels),
        "spec": {
            "selector": {"matchLabels": labels},
            "updateStrategy": strategy,
            "template": {"metadata": {"labels": labels,
                                      "annotations": {"percale.io/cni-config-hash": settings_hash}},
                         "spec": pod},
        },
    }


def controllers_deployment(spec: InstallationSpec, version: str) -> dict[str, Any]:
    labels = {"app.kubernetes.io/name": "percale-controllers"}
    # /metrics on the pod's address, for Prometheus to scrape, as kube-controllers serves it.
    # An IPv6-only cluster's pods have no IPv4 address; elsewhere an IPv6 socket would fail on
    # a kernel without IPv6.
    port = CONTROLLERS_METRICS_PORT
    any_address = "[::]" if _pool_families(spec) == {6} else "0.0.0.0"
    pod: dict[str, Any] = {
        "serviceAccountName": "percale-controllers",
        "priorityClassName": "system-cluster-critical",
        "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                        {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
        "nodeSelector": {"kubernetes.io/os": "linux", **(spec.control_plane_node_selector or {})},
        "containers": [{
            "name": "percale-controllers",
            "image": image(spec, CONTROLLERS_IMAGE, version),
            "command": ["percale-controllers"],
            "env": [{"name": "PERCALE_DATASTORE_TYPE", "value": "kubernetes"},
                    {"name": "PERCALE_METRICS_LISTEN", "value": f"{any_address}:{port}"}],
            "ports": [{"name": "metrics", "containerPort": port, "protocol": "TCP"}],
        }],
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": _meta("percale-controllers", **labels),
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": pod}},
    }


def pools(spec: InstallationSpec) -> list[dict[str, Any]]:
    """The IPPools the spec asks for, as percale.io objects. The operator keeps the ones it owns
    equal to them, and retires those whose entry is gone (installation/pools.py, tigera's pool
    controller); the pools carry no owner reference, so they outlive the Installation."""
    return [ip_pool(entry).to_document() for entry in spec.calico_network.ip_pools or []]


def render(spec: InstallationSpec, version: str) -> list[dict[str, Any]]:
    """Everything the operator keeps in place, in the order it applies them (pools apart)."""
    return [*rbac_objects(), cni_config(spec), node_daemonset(spec, version),
            controllers_deployment(spec, version)]
