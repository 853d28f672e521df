"""``mschedule keys gen NAME``: an Ed25519 key pair for signing tasks (docs/security.md).
Hooked into :func:`mschedule_master.cli.parser`; it needs no master.

Writes ``NAME.key`` (0600; the master's ``signing_key``) and ``NAME.pub``, and prints the
key id and the ``[[keys]]`` entry for agents' trust files. The private key is never printed.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

from .cli import EXIT_OK, CliError

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
    print(f'\nfor the agents\' trust file:\n\n[[keys]]\nkid = "{key.kid}"\npublic = "{public}"\nrole = "master"')
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    k = sub.add_parser("keys", help="signing keys (no master needed)")
    ksub = k.add_subparsers(dest="keys_cmd", required=True, metavar="COMMAND")
    g = ksub.add_parser("gen", help="write a new Ed25519 key pair NAME.key (0600) and NAME.pub")
    g.add_argument("name", metavar="NAME", help="path and base name of the files, e.g. /etc/mschedule/master-2026")
    g.set_defaults(fn=cmd_gen)
