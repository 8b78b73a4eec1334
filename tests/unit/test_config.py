"""Config: the shipped example parses, unknown keys are refused, flags override the file."""

from __future__ import annotations

import pathlib

import pytest

from agent.config import from_args, load_file
from agent.tls import is_local

EXAMPLE = pathlib.Path(__file__).parents[2] / "systemd" / "aca-agent.toml"


def test_shipped_example_and_defaults() -> None:
    cfg = load_file(str(EXAMPLE))
    assert cfg.grpc.listen == "0.0.0.0:50001"
    assert cfg.grpc.max_message_bytes >= 64 * 1024 * 1024
    assert cfg.ovs.bridge == "br-int"
    assert from_args([]).grpc.listen == "0.0.0.0:50001"


def test_flags_override_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('[agent]\nhost_id = "h9"\nlog_level = "DEBUG"\n[kafka]\nbootstrap_servers = "k:9092"\n')
    cfg = from_args(["--config", str(path), "--log-level", "WARNING", "--datapath-type", "netdev"])
    assert (cfg.host_id, cfg.log_level, cfg.ovs.datapath_type) == ("h9", "WARNING", "netdev")
    assert cfg.kafka_topic == "host-h9" and cfg.kafka_group == "aca-agent-h9"
    assert cfg.kafka.bootstrap_servers == "k:9092"


@pytest.mark.parametrize("text", ["[agent]\nbogus = 1\n", "[nope]\n", '[grpc]\nlisten_addr = "x"\n'])
def test_unknown_keys_are_refused(tmp_path: pathlib.Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError):
        load_file(str(path))


@pytest.mark.parametrize(
    ("text", "reason"),
    [("mtu = 70000", "mtu"), ("lease_time = 0", "lease_time"), (f'domain = "{"d" * 256}"', "domain")],
)
def test_dhcp_settings_no_option_can_carry_are_refused(
    tmp_path: pathlib.Path, text: str, reason: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[dhcp]\n{text}\n")
    with pytest.raises(ValueError, match=reason):
        load_file(str(path))


def test_controller_section_and_the_old_agent_key(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[controller]\naddress = "ctl:9016"\nca = "/ca"\ncert = "/c"\nkey = "/k"\nserver_name = "ctl"\n'
    )
    cfg = from_args(["--config", str(path), "--controller-server-name", "other"])
    assert (cfg.controller.address, cfg.controller.ca, cfg.controller.server_name) == (
        "ctl:9016",
        "/ca",
        "other",
    )
    path.write_text('[agent]\ncontroller = "old:9016"\n')
    assert load_file(str(path)).controller.address == "old:9016"
    path.write_text('[agent]\ncontroller = "old:9016"\n[controller]\naddress = "new:9016"\n')
    with pytest.raises(ValueError, match="set twice"):
        load_file(str(path))


def test_grpc_tls_flags_and_pinned_clients(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "g.toml"
    path.write_text('[grpc]\nallowed_clients = ["ctl-1", "ctl-2"]\nallow_insecure = true\n')
    cfg = from_args(["--config", str(path), "--grpc-tls-cert", "/c", "--grpc-tls-key", "/k"])
    assert cfg.grpc.allowed_clients == ("ctl-1", "ctl-2") and cfg.grpc.allow_insecure
    assert (cfg.grpc.tls_cert, cfg.grpc.tls_key, cfg.grpc.tls_client_ca) == ("/c", "/k", "")


@pytest.mark.parametrize(
    ("address", "local"),
    [
        ("unix:/run/x.sock", True),
        ("127.0.0.1:50001", True),
        ("127.3.2.1:50001", True),
        ("[::1]:50001", True),
        ("localhost:50001", True),
        ("ipv4:127.0.0.1:1", True),
        ("0.0.0.0:50001", False),
        ("[::]:50001", False),
        ("10.0.0.1:50001", False),
        ("controller.example:9016", False),
        ("dns:///localhost.example:1", False),
        ("SSL://127.0.0.1:9093", True),
    ],
)
def test_which_addresses_stay_on_the_host(address: str, local: bool) -> None:
    assert is_local(address) is local


def test_bounds_parse_and_a_zero_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("[agent]\ncore_queue_mb = 16\n[grpc]\nmax_message_mb = 8\nmaximum_concurrent_rpcs = 2\n")
    cfg = load_file(str(path))
    grpc = cfg.grpc
    assert (cfg.core_queue_mb, grpc.max_message_bytes, grpc.maximum_concurrent_rpcs) == (16, 8 << 20, 2)
    defaults = from_args([])
    assert (defaults.core_queue_mb, defaults.grpc.max_message_bytes) == (64, 64 << 20)
    zeros = (
        "[agent]\ncore_queue_mb = 0",
        "[grpc]\nmaximum_concurrent_rpcs = 0",
        "[grpc]\nmax_message_mb = 0",
    )
    for text in zeros:
        path.write_text(text)
        with pytest.raises(ValueError, match="must be a positive integer"):
            load_file(str(path))


def test_subscribe_endpoint_from_file_and_flag(tmp_path: pathlib.Path) -> None:
    """SubscribeInfoProvisioner: port 50002 by default, [grpc] subscribe_listen, --subscribe-listen
    on top ("" turns it off); the rest of [grpc] (TLS included) is shared with the goal-state endpoint."""
    assert load_file(str(EXAMPLE)).grpc.subscribe_listen == "0.0.0.0:50002"
    assert from_args([]).grpc.subscribe_listen == "0.0.0.0:50002"
    path = tmp_path / "a.toml"
    path.write_text('[grpc]\nsubscribe_listen = "127.0.0.1:6002"\ntls_cert = "c"\n')
    assert from_args(["--config", str(path)]).grpc.subscribe_listen == "127.0.0.1:6002"
    cfg = from_args(["--config", str(path), "--subscribe-listen", "", "--grpc-listen", "unix:/g"])
    assert (cfg.grpc.subscribe_listen, cfg.grpc.listen, cfg.grpc.tls_cert) == ("", "unix:/g", "c")
