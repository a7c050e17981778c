"""``tokenuni <stage>``: the command line every Snakemake rule calls (usable without Snakemake).

Each stage takes its configuration as JSON (exactly the config subtree it depends on), writes its
outputs atomically, and, with ``--record``, records itself as one MLflow run (see
:mod:`tokenuni.tracking`).
"""
from __future__ import annotations

import argparse
import logging
import sys

from tokenuni.cli import finetune, geometry, study, sts
from tokenuni.cli.common import lease_for

log = logging.getLogger("tokenuni")


def build_parser() -> argparse.ArgumentParser:
    """The ``tokenuni`` parser: each command module (study, geometry, sts, finetune) registers its commands."""
    parser = argparse.ArgumentParser(prog="tokenuni", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    for commands in (study, geometry, sts, finetune):
        commands.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("urllib3", "filelock", "httpx", "alembic", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from tokenuni.errors import TokenuniError

    try:
        with lease_for(args):
            args.func(args)
    except TokenuniError as error:  # a user error: its message says what and how to fix it; anything else is a bug
        log.error("%s", error)
        if args.verbose:
            raise
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
