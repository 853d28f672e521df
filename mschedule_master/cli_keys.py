"""``mschedule keys``: signing keys (docs/security.md). Hooked into :func:`mschedule_master.cli.parser`.

    mschedule keys gen NAME                         # needs no master
    mschedule keys approve JOB VERSION --key FILE   # an operator's offline key approves a job version

``gen`` writes ``NAME.key`` (0600: the master's ``signing_key``, or an operator's offline
key) and ``NAME.pub``, and prints the key id and the ``[[keys]]`` entry for agents' trust
files. ``approve`` signs the version's script sha256 here, with the key never leaving this
machine, and sends only the signature to the master. No private key is ever printed.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

from .cli import EXIT_OK, CliError, command_help

TYPE_CHECKING = False
if TYPE_CHECKING:
    from rich.console import Console

    from .cli import Client


def cmd_gen(client: Client, args: argparse.Namespace, console: Console) -> int:
    from mschedule_agent import keys

    key = keys.generate()
    try:
        priv, pub = keys.write_pair(key, Path(args.name))
    except (keys.KeyFileError, OSError) as e:
        raise CliError(str(e)) from None
    public = base64.b64encode(key.public).decode()
    print(f"key id:      {key.kid}\nprivate key: {priv} (mode 0600: the master's signing_key)\npublic key:  {pub}")
    print(f'\nfor the agents\' trust file:\n\n[[keys]]\nkid = "{key.kid}"\npublic = "{public}"\nrole = "{args.role}"')
    return EXIT_OK


def cmd_approve(client: Client, args: argparse.Namespace, console: Console) -> int:
    from mschedule_agent import keys
    from mschedule_agent.signing import sign_approval

    from .cli import quote

    try:
        key = keys.load_private(Path(args.key))
    except keys.KeyFileError as e:
        raise CliError(str(e)) from None
    path = f"/api/v1/jobs/{quote(args.job)}/versions/{args.version}"
    version = client.get(path)
    defaults = version.get("defaults") or {}
    approval = sign_approval(key, job=version["job"], version=version["version"], script_sha256=version["script_sha256"],
                             env=defaults.get("env") or {}, cwd=defaults.get("cwd"))  # fmt: skip
    body = {"public": base64.b64encode(key.public).decode(), "statement": approval.text,
            "sig": base64.b64encode(approval.sig).decode()}  # fmt: skip
    doc = client.post(path + "/approvals", body)
    print(f"{doc['job']}@{doc['version']} approved by {doc['kid']} (script sha256 {doc['script_sha256']})")
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = sub.add_parser("keys", help=command_help("keys"))
    ksub = k.add_subparsers(dest="keys_cmd", required=True, metavar="COMMAND")
    g = ksub.add_parser("gen", help="write a new Ed25519 key pair NAME.key (0600) and NAME.pub")
    g.add_argument("name", metavar="NAME", help="path and base name of the files, e.g. /etc/mschedule/master-2026")
    g.add_argument("--role", choices=("master", "operator"), default="master",
                   help="master: the online key that signs dispatches; operator: an offline key that approves jobs")
    g.set_defaults(fn=cmd_gen)
    a = ksub.add_parser("approve", help="sign a job version with an operator's offline key (agents may require it)")
    a.add_argument("job", metavar="JOB")
    a.add_argument("version", type=int, metavar="VERSION")
    a.add_argument("--key", required=True, metavar="FILE", help="the operator's private key (from keys gen)")
    a.set_defaults(fn=cmd_approve)
