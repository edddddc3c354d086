"""Least-privilege access for percale on the Kubernetes datastore: the objects of
manifests/rbac.yaml (generated from here by `percalectl manifests`), which render() installs too.

  percale-node         the node agent, which also serves the CNI plugin: the plugin binary on
                       the host is a shim that talks to the agent's socket and holds no
                       Kubernetes credentials, so it needs no role of its own (Calico's plugin
                       does, because it writes to the API itself).
  percale-controllers  cluster-wide IPAM garbage collection and cleanup after deleted Nodes.

RBAC cannot say "only your own Node": the ValidatingAdmissionPolicy at the end lets a
percale-node identity write the status of its own Node, and the endpoint of a Pod on its own
node, and nothing else. A node's identity is the node name its service-account token carries
(authentication.kubernetes.io/node-name, Kubernetes 1.32+), or a user named
percale-node:<node> (client certificates, as the tests and the lab use).
"""

from __future__ import annotations

from typing import Any

import yaml

NAMESPACE = "percale-system"

RBAC_YAML = """\
apiVersion: v1
kind: Namespace
metadata:
  name: percale-system
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: percale-node
  namespace: percale-system
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: percale-controllers
  namespace: percale-system
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: percale-node
rules:
  # Its own Node (addresses, labels) and every node's (BGP peers, VXLAN tunnel ends); percale's
  # fields are written as annotations through nodes/status.
  - apiGroups: [""]
    resources: [nodes]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [nodes/status]
    verbs: [get, patch, update]
  # Pods: the CNI side writes the endpoint (IPs, container ID) on the Pod through pods/status.
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [pods/status]
    verbs: [patch]
  - apiGroups: [percale.io]
    resources: [ippools, ipreservations, bgpconfigurations, bgppeers, bgpfilters, networkpolicies, globalnetworkpolicies, profiles]
    verbs: [get, list, watch]
  - apiGroups: [""]
    resources: [namespaces]
    verbs: [get, list, watch]
  - apiGroups: [networking.k8s.io]
    resources: [networkpolicies]
    verbs: [get, list, watch]
  - apiGroups: [percale.io]
    resources: [ipamblocks, blockaffinities, ipamhandles, ipamconfigs, nodestatuses]
    verbs: [get, list, watch, create, update, delete]
  - apiGroups: [percale.io]
    resources: [nodestatuses/status]
    verbs: [get, update]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: percale-controllers
rules:
  - apiGroups: [""]
    resources: [nodes, pods]
    verbs: [get, list, watch]
  - apiGroups: [percale.io]
    resources: [ippools]
    verbs: [get, list, watch]
  - apiGroups: [percale.io]
    resources: [ipamblocks, blockaffinities, ipamhandles, ipamconfigs, nodestatuses]
    verbs: [get, list, watch, update, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: percale-node
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: percale-node
subjects:
  - kind: ServiceAccount
    name: percale-node
    namespace: percale-system
  - kind: Group
    apiGroup: rbac.authorization.k8s.io
    name: percale:nodes
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: percale-controllers
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: percale-controllers
subjects:
  - kind: ServiceAccount
    name: percale-controllers
    namespace: percale-system
  - kind: Group
    apiGroup: rbac.authorization.k8s.io
    name: percale:controllers
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: percale-node-writes-its-own
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: [v1]
        operations: [UPDATE]
        resources: [nodes/status, pods/status]
  matchConditions:
    - name: is-percale-node
      expression: >-
        'percale:nodes' in request.userInfo.groups ||
        request.userInfo.username == 'system:serviceaccount:percale-system:percale-node'
  variables:
    - name: node
      expression: >-
        has(request.userInfo.extra) &&
        'authentication.kubernetes.io/node-name' in request.userInfo.extra ?
        request.userInfo.extra['authentication.kubernetes.io/node-name'][0] :
        (request.userInfo.username.startsWith('percale-node:') ?
         request.userInfo.username.substring(13) : '')
    - name: target
      expression: >-
        request.resource.resource == 'nodes' ? object.metadata.name :
        (has(object.spec.nodeName) ? object.spec.nodeName : '')
  validations:
    - expression: variables.node != '' && variables.target == variables.node
      messageExpression: >-
        'percale-node on ' + (variables.node == '' ? 'an unknown node' : variables.node) +
        ' may only write its own node: this ' + request.resource.resource +
        ' belongs to ' + (variables.target == '' ? 'no node' : variables.target)
      reason: Forbidden
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: percale-node-writes-its-own
spec:
  policyName: percale-node-writes-its-own
  validationActions: [Deny]
"""


def rbac_objects() -> list[dict[str, Any]]:
    """The Namespace, ServiceAccounts, ClusterRoles, bindings and the admission policy."""
    return [doc for doc in yaml.safe_load_all(RBAC_YAML) if doc]
