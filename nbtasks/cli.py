"""The ``nbtasks`` command. No logic of its own: it parses and calls the library."""

from __future__ import annotations

import argparse
import sys

from . import demo, server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbtasks", description="Parallel, resumable map for notebooks.")
    commands = parser.add_subparsers(dest="command", required=True)
    srv = commands.add_parser("server", help="the embedded Redis-compatible server (NBTASKS_HOME)")
    srv.add_argument("action", choices=["status", "start", "stop"])
    commands.add_parser("demo", help="fetch pages from a local HTTP server: for-loop against pmap")
    args, rest = parser.parse_known_args(argv)

    if args.command == "demo":
        demo.main(rest)
        return 0
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.action == "status":
        state = server.status()
        print(state)
        return 0 if state.running else 3
    if args.action == "start":
        print(server.start())
        return 0
    stopped = server.stop()
    print("nbtasks server: stopped" if stopped else "nbtasks server: was not running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
