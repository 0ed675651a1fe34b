"""Command line: `forgetless train | eval | report | compare | rehearsal generate | chat | merge | export | serve |
reward score | registry | pipeline | plan | env | data | ui | tune-scale`.

The subcommands are one table (commands/__init__.py: name, help, parser builder, handler); this module
builds the parser from it, parses, and runs the handler. Options and `key=value` overrides may come in
any order (`forgetless train my.yaml --resume train.max_steps=2`). Nothing imported here loads torch or
transformers (the handlers' work does, through api.py), so `forgetless --help` answers at once.

User mistakes (UserError) print one line and exit 2; --debug shows the traceback instead.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import warnings

from forgetless import api
from forgetless.commands import COMMANDS, TABLE
from forgetless.commands.arguments import subcommand
from forgetless.errors import UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forgetless", description="Fine-tune LLMs without catastrophic forgetting.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors too")
    sub = p.add_subparsers(dest="command", required=True)
    for c in TABLE:
        c.build(subcommand(sub, c.name, c.help))
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """Parse with options and overrides in any order: argparse stops filling a list positional at the
    first option, so the positionals after it come back unparsed; they join the list (config, overrides
    or run directories) they belong to. Unknown options stay errors."""
    p = parser()
    args, extra = p.parse_known_args(argv)
    lists = ("items", "runs", "files")
    target = next((name for name in lists if isinstance(getattr(args, name, None), list)), None)
    if extra and (target is None or any(a.startswith("-") for a in extra)):
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        setattr(args, target, [*getattr(args, target), *extra])
    args.argv = argv  # as typed: `train --launch` hands it on to the processes it starts
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else list(argv))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.debug:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    # bitsandbytes warns at import on CPUs with AVX512-BF16 that it cannot fetch an optional hub
    # kernel (hardware.quiet_third_party_logs); the level must be set before anything imports it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        api.quiet_third_party_logs()  # torch and transformers load here, after parsing: --help stays instant
        return COMMANDS[args.command].run(args)
    except UserError as e:
        if args.debug:
            raise
        print(f"forgetless: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nforgetless: interrupted; resume with --resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `forgetless train --help-config | head`: the reader left, which is no error (an
        # OSError too: caught before the handler below, which re-raises every OSError but a full disk)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 0
    except OSError as e:  # a full disk where no writer named its file (each writes to a temporary name first)
        if args.debug or e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {e.filename}" if e.filename else ""
        print(f"forgetless: error: no space left on the device{where}; free space and run again", file=sys.stderr)
        return 2
