"""`zonegate pki init DIR`: a development PKI for the demo and tests (never for production)."""

from __future__ import annotations

import argparse
from pathlib import Path

from zonegate.controlplane.pki import DEFAULT_CLIENT_ROLES


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("pki", help="development certificates")
    actions = parser.add_subparsers(dest="pki_action", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="make a CA, a server certificate and client certificates with roles")
    init.add_argument("directory", type=Path)
    init.add_argument(
        "--role", action="append", default=None, metavar="NAME=ROLE",
        help="a client certificate NAME.crt carrying ROLE (repeatable; default: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_CLIENT_ROLES.items()) + ")",
    )
    init.add_argument("--key-type", choices=("ec", "rsa"), default="ec", help="ECDSA P-256 or RSA 2048")
    init.add_argument("--host", action="append", default=None,
                      help="name or address in the server certificate (default 127.0.0.1, localhost)")
    init.add_argument("--opcua-uri", default="urn:zonegate:opcua",
                      help="application URI in the OPC UA server certificate (the policy's opcua.application_uri)")
    init.set_defaults(func=init_pki)


def init_pki(args: argparse.Namespace) -> int:
    from zonegate.controlplane.pki import generate

    roles = dict(DEFAULT_CLIENT_ROLES)
    if args.role:
        roles = {}
        for item in args.role:
            name, sep, role = item.partition("=")
            if not sep or not name or not role:
                print(f"zonegate: --role wants NAME=ROLE, got {item!r}")
                return 2
            roles[name] = role
    hosts = args.host or ["127.0.0.1", "localhost"]
    pki = generate(args.directory, roles=roles, key_kind=args.key_type, server_hosts=hosts, opcua_uri=args.opcua_uri)
    print(f"development PKI in {pki.directory} (keys mode 0600; do not ship them)")
    for name, role in roles.items():
        print(f"  {name}.crt  role {role}")
    print("  server.crt  the Modbus/TCP Security listener;  l3-server.crt  a level-3 server")
    print("  client-norole, client-tworoles, client-badrole, client-expired, client-notyet,")
    print("  client-revoked (in ca.crl), client-rogue (from rogue-ca), client-badsig: for refusal tests")
    print(f"  opcua-server.crt  the OPC UA converter (application URI {args.opcua_uri});  opcua-client.crt  a")
    print("  level-3 OPC UA client application;  opcua-user-operator.crt, opcua-user-historian.crt  X.509 users;")
    print("  opcua-rogue-client.crt (from rogue-ca): for refusal tests")
    return 0
