"""A gRPC client run inside a sandbox host's namespace (``ip netns exec``), where the agent
listens on TCP: it pushes an empty goal state and prints the call's status code name (OK when
served). Credentials by flag: none (plaintext), a CA only, or a CA with a client certificate."""

from __future__ import annotations

import argparse
import pathlib
import sys

import grpc

from agent._pb import goalstate_pb2 as pb
from agent._pb import goalstate_pb2_grpc as pb_grpc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("target")
    p.add_argument("--ca", help="trust this CA (TLS); without it: plaintext")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--server-name")
    args = p.parse_args(argv)
    if args.ca is None:
        channel = grpc.insecure_channel(args.target)
    else:
        creds = grpc.ssl_channel_credentials(
            root_certificates=pathlib.Path(args.ca).read_bytes(),
            private_key=pathlib.Path(args.key).read_bytes() if args.key else None,
            certificate_chain=pathlib.Path(args.cert).read_bytes() if args.cert else None,
        )
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(args.target, creds, options=options)
    with channel:
        try:
            pb_grpc.GoalStateProvisionerStub(channel).PushNetworkResourceStates(pb.GoalState(), timeout=10)
            print("OK")
        except grpc.RpcError as exc:
            print(exc.code().name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
