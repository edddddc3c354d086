"""Where percalectl finds its datastore: flags over environment over config file, and clear
errors when it cannot."""

from __future__ import annotations

import pytest

from tests.helpers.etcd_server import free_port

pytestmark = pytest.mark.cli


def test_unreachable_etcd_is_a_clear_error(cli):
    dead = f"http://127.0.0.1:{free_port()}"
    result = cli("get", "ippools", env={"ETCD_ENDPOINTS": dead})
    assert result.code == 1
    assert "cannot reach etcd" in result.err and dead in result.err


def test_flag_beats_environment_and_config_file(cli, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    config = tmp_path / "percalectl.cfg"
    config.write_text(f"apiVersion: percale.io/v1\nkind: PercaleAPIConfig\nspec:\n  etcdEndpoints: {dead}\n")
    # The environment names a live etcd, but the config file alone is overridden by it.
    assert cli("--config", str(config), "get", "ippools").code == 0
    # A flag beats the environment.
    assert cli("--etcd-endpoints", dead, "get", "ippools").code == 1
    # With no environment, the config file is used.
    only_file = cli("--config", str(config), "get", "ippools", env={"ETCD_ENDPOINTS": ""})
    assert only_file.code == 1 and dead in only_file.err


def test_bad_settings_are_named(cli, tmp_path):
    wrong_type = cli("get", "ippools", env={"PERCALE_DATASTORE_TYPE": "zookeeper"})
    assert wrong_type.code == 1 and "datastore type 'zookeeper' is not supported" in wrong_type.err
    no_key = cli("--etcd-cert-file", str(tmp_path), "get", "ippools")
    assert no_key.code == 1 and "etcdCertFile and etcdKeyFile must be given together" in no_key.err
    missing_ca = cli("--etcd-ca-cert-file", str(tmp_path / "ca.pem"), "get", "ippools")
    assert missing_ca.code == 1 and "no such file" in missing_ca.err
    bad_file = tmp_path / "bad.cfg"
    bad_file.write_text("spec:\n  etcdEndpoint: x\n")
    unknown = cli("--config", str(bad_file), "get", "ippools")
    assert unknown.code == 1 and "unknown field spec.etcdEndpoint" in unknown.err


def test_kubernetes_settings_are_checked_and_an_unreachable_apiserver_is_clear(cli, tmp_path):
    kube = {"PERCALE_DATASTORE_TYPE": "kubernetes"}
    missing = cli("get", "ippools", env={**kube, "KUBECONFIG": str(tmp_path / "nope")})
    assert missing.code == 1 and "kubeconfig" in missing.err and "no such file" in missing.err
    config = tmp_path / "kubeconfig"
    config.write_text(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n"
        f"    server: https://127.0.0.1:{free_port()}\n    insecure-skip-tls-verify: true\n"
        "users:\n- name: u\n  user: {token: x}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n"
        "current-context: c\n")
    dead = cli("--kubeconfig", str(config), "get", "ippools", env=kube)
    assert dead.code == 1 and "Kubernetes API cannot be reached" in dead.err
    # The config file names the type and the kubeconfig as well.
    cfg = tmp_path / "percalectl.cfg"
    cfg.write_text("apiVersion: percale.io/v1\nkind: PercaleAPIConfig\nspec:\n"
                   f"  datastoreType: kubernetes\n  kubeconfig: {tmp_path / 'absent'}\n")
    from_file = cli("--config", str(cfg), "get", "ippools")
    assert from_file.code == 1 and "absent: no such file" in from_file.err


def test_bad_etcd_endpoints_are_one_line_naming_the_setting(cli, tmp_path):
    """Each once a traceback, gRPC C-core log lines, or a connection to the wrong port."""
    cases = [
        (["--etcd-endpoints", "http://127.0.0.1:121563"], {},
         "--etcd-endpoints: 'http://127.0.0.1:121563': the port must be 1-65535"),
        (["--etcd-endpoints", "http://[::1"], {},
         "--etcd-endpoints: 'http://[::1': not a valid URL (Invalid IPv6 URL)"),
        (["--etcd-endpoints", "http://"], {}, "--etcd-endpoints: 'http://': the host is missing"),
        ([], {"ETCD_ENDPOINTS": "ftp://127.0.0.1:2379"},
         "ETCD_ENDPOINTS: 'ftp://127.0.0.1:2379': the scheme must be http, https or unix"),
    ]
    for flags, env, message in cases:
        result = cli(*flags, "get", "ippools", env=env)
        assert result.code == 1
        assert "Traceback" not in result.err
        assert result.err == f"Invalid datastore configuration: {message}\n"


def test_a_list_of_endpoints_in_the_config_file_is_named(cli, tmp_path):
    config = tmp_path / "percalectl.cfg"
    config.write_text("apiVersion: percale.io/v1\nkind: PercaleAPIConfig\nspec:\n"
                      "  etcdEndpoints: [http://127.0.0.1:2379, http://127.0.0.2:2379]\n")
    result = cli("--config", str(config), "get", "ippools")
    assert result.code == 1
    assert "Traceback" not in result.err
    assert result.err == (
        f"Invalid datastore configuration: config file {config}: spec.etcdEndpoints must be a"
        " string, not a list (several endpoints are one comma-separated string:"
        " http://127.0.0.1:2379,http://127.0.0.2:2379)\n")


def test_a_malformed_kubeconfig_is_one_line_naming_the_file(cli, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nclusters:\n- name: c\n  cluster: {server: [\n")
    result = cli("--datastore-type", "kubernetes", "--kubeconfig", str(kubeconfig), "get", "ippools")
    assert result.code == 1
    assert "Traceback" not in result.err
    assert result.err == (
        f"Failed to execute command: kubeconfig {kubeconfig}: not valid YAML: expected the node"
        " content, but found '<stream end>' at line 5, column 1\n")
