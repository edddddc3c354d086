"""Bad datastore settings are a ConfigError (or, for a kubeconfig, a KubeConfigError) that names
the setting as the user wrote it and the reason, on one line; good settings reach the etcd client
as before. percalectl's own runs of these are in tests/cli/test_datastore_settings.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from percale.datastore import config as config_module
from percale.datastore.config import ConfigError, load_config
from percale.datastore.etcd_client import EtcdClient, channel_target
from percale.datastore.kube_client import KubeConfigError, configuration

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_default_config_file(monkeypatch, tmp_path):
    """This host's /etc/percale/percalectl.cfg, if it has one, stays out of these tests."""
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_FILE", tmp_path / "absent.cfg")


def config_file(tmp_path: Path, spec: str) -> str:
    path = tmp_path / "percalectl.cfg"
    path.write_text(f"apiVersion: percale.io/v1\nkind: PercaleAPIConfig\nspec:\n{spec}")
    return str(path)


@pytest.mark.parametrize("endpoint, target, tls", [
    ("http://127.0.0.1:2379", "127.0.0.1:2379", False),
    ("https://etcd.example:2379", "etcd.example:2379", True),
    ("HTTPS://Etcd:1", "Etcd:1", True),
    ("127.0.0.1:2379", "127.0.0.1:2379", False),  # a bare host:port is http
    ("http://[::1]:2379", "[::1]:2379", False),
    ("http://etcd", "etcd", False),  # no port: gRPC's default
    ("http://10.0.0.1:65535/ignored/path", "10.0.0.1:65535", False),
    ("unix:///tmp/etcd/localhost:2379", "unix:/tmp/etcd/localhost:2379", False),
])
def test_good_endpoints_name_the_same_channel_target_as_before(endpoint, target, tls):
    assert channel_target(endpoint) == (target, tls)


REASONS = {
    "http://[::1": "not a valid URL (Invalid IPv6 URL)",
    "http://": "the host is missing",
    "http://:2379": "the host is missing",
    "http://127.0.0.1:121563": "the port must be 1-65535",
    "127.0.0.1:99999": "the port must be 1-65535",
    "http://127.0.0.1:0": "the port must be 1-65535",
    "http://127.0.0.1:": "the port must be 1-65535",
    "http://127.0.0.1:etcd": "the port must be 1-65535",
    "ftp://127.0.0.1:2379": "the scheme must be http, https or unix",
    "http://::1:2379": "an IPv6 address goes in brackets, as in http://[::1]:2379",
    "unix://localhost:2379": "a unix endpoint is unix:///path/to/socket (an absolute path, no host)",
}


@pytest.mark.parametrize("endpoint", REASONS)
def test_a_bad_endpoint_is_named_with_its_reason_wherever_it_was_set(endpoint, tmp_path):
    reason = REASONS[endpoint]
    with pytest.raises(ConfigError) as flag:
        load_config(environ={}, etcd_endpoints=f"http://127.0.0.1:2379,{endpoint}")
    assert str(flag.value) == f"--etcd-endpoints: {endpoint!r}: {reason}"
    with pytest.raises(ConfigError) as env:
        load_config(environ={"ETCD_ENDPOINTS": endpoint})
    assert str(env.value) == f"ETCD_ENDPOINTS: {endpoint!r}: {reason}"
    path = config_file(tmp_path, f"  etcdEndpoints: '{endpoint}'\n")
    with pytest.raises(ConfigError) as in_file:
        load_config(path, environ={})
    assert str(in_file.value) == f"config file {path}: spec.etcdEndpoints: {endpoint!r}: {reason}"


def test_the_setting_that_won_is_the_one_named(tmp_path):
    path = config_file(tmp_path, "  etcdEndpoints: http://127.0.0.1:2379\n")
    with pytest.raises(ConfigError, match="^ETCD_ENDPOINTS: 'ftp://x:1'"):
        load_config(path, environ={"ETCD_ENDPOINTS": "ftp://x:1"})
    # A good flag over a bad variable: nothing to say.
    assert load_config(path, environ={"ETCD_ENDPOINTS": "ftp://x:1"},
                       etcd_endpoints="http://10.0.0.1:2379").endpoints == ["http://10.0.0.1:2379"]
    with pytest.raises(ConfigError, match="^--etcd-endpoints is empty$"):
        load_config(environ={}, etcd_endpoints=" , ")


def test_good_settings_load_as_before(tmp_path):
    assert load_config(environ={}).endpoints == ["http://127.0.0.1:2379"]
    path = config_file(tmp_path, "  etcdEndpoints: https://10.0.0.1:2379, https://10.0.0.2:2379\n"
                                 "  datastoreType: etcdv3\n  etcdCACertFile:\n")
    loaded = load_config(path, environ={})
    assert loaded.endpoints == ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    assert loaded.etcd_ca_cert_file is None
    # tests/helpers/etcd_server.py's unix_endpoint, the form percale-node is handed in tests.
    socket = f"unix://{tmp_path}/localhost:2379"
    assert load_config(environ={"ETCD_ENDPOINTS": socket}).endpoints == [socket]


@pytest.mark.parametrize("spec, message", [
    ("  etcdEndpoints: [http://a:2379, http://b:2379]\n",
     "spec.etcdEndpoints must be a string, not a list (several endpoints are one comma-separated"
     " string: http://a:2379,http://b:2379)"),
    ("  etcdEndpoints: {host: a}\n", "spec.etcdEndpoints must be a string, not a mapping"),
    ("  kubeconfig: true\n", "spec.kubeconfig must be a string, not true or false"),
    ("  datastoreType: 3\n", "spec.datastoreType must be a string, not a number"),
    ("  etcdCertFile: [a]\n", "spec.etcdCertFile must be a string, not a list"),
])
def test_a_config_file_field_of_the_wrong_type_is_named(tmp_path, spec, message):
    path = config_file(tmp_path, spec)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value) == f"config file {path}: {message}"


@pytest.mark.parametrize("text, problem", [
    ("spec: [\n", "expected the node content, but found '<stream end>' at line 2, column 1"),
    ("spec:\n  etcdEndpoints: a\n\tkind: x\n",
     "found character '\\t' that cannot start any token at line 3, column 1"),
])
def test_a_config_file_that_is_not_yaml_is_one_line(tmp_path, text, problem):
    path = tmp_path / "percalectl.cfg"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert str(caught.value) == f"config file {path} is not valid YAML: {problem}"


def test_a_config_file_that_is_not_text_is_one_line(tmp_path):
    path = tmp_path / "percalectl.cfg"
    path.write_bytes(b"\x80spec: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), environ={})
    assert str(caught.value) == (f"config file {path} is not valid YAML: unacceptable character"
                                 " at position 0: invalid start byte")


def test_the_etcd_client_refuses_a_bad_endpoint_before_any_channel():
    with pytest.raises(ValueError, match=r"^etcd endpoint 'http://': the host is missing$"):
        EtcdClient(["http://127.0.0.1:2379", "http://"])


@pytest.mark.parametrize("text, problem", [
    ("apiVersion: v1\nclusters: [\n",
     "not valid YAML: expected the node content, but found '<stream end>' at line 3, column 1"),
    ("a: b\n---\nc: d\n", "not valid YAML: but found another document at line 2, column 1"),
    ("", "not a kubeconfig (no mapping at the top)"),
    ("- a\n- b\n", "not a kubeconfig (no mapping at the top)"),
    ("clusters: 5\n", "clusters must be a list"),
    ("clusters: [a]\n", "clusters[0] must be a mapping with a cluster mapping"),
    ("contexts:\n- name: c\n  context: 5\n", "contexts[0] must be a mapping with a context mapping"),
])
def test_a_malformed_kubeconfig_is_a_kube_config_error_on_one_line(tmp_path, text, problem):
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    with pytest.raises(KubeConfigError) as caught:
        asyncio.run(configuration(str(path)))
    assert str(caught.value) == f"kubeconfig {path}: {problem}"


def test_a_well_formed_kubeconfig_still_loads(tmp_path):
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n"
        "    server: https://127.0.0.1:6443\n    insecure-skip-tls-verify: true\n"
        "users:\n- name: u\n  user: {token: x}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n"
        "current-context: c\n")
    loaded = asyncio.run(configuration(str(path)))
    assert loaded.host == "https://127.0.0.1:6443"
