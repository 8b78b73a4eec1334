"""Config: the shipped example parses, unknown keys are refused, flags override the file."""

from __future__ import annotations

import pathlib

import pytest

from agent.config import from_args, load_file

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
