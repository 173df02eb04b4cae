"""The ``kolk`` command line. Subcommands grow with the parts (DESIGN.md §1)."""

from __future__ import annotations

import os
import sys

from .. import __version__


# Commands that write state or start servers. The others (produce, consume, smartmodule build
# ...) keep the user's umask for what they write: a module or an export is the user's to share.
PRIVATE_COMMANDS = frozenset({"sc", "spu", "cluster", "cert", "demo", "bench"})


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command killed by a closed pipe


def main(argv: list[str] | None = None) -> int:
    """``kolk``. A reader that went away (``kolk topic list | head -2``) ends the command
    quietly with status 141, as SIGPIPE would: no traceback, nothing more written."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # inside the try: a closed pipe shows on this flush as often as on a print
        return status
    except BrokenPipeError:
        # Point stdout at /dev/null so the interpreter's own flush at exit finds nothing to
        # complain about either (the recipe of the Python docs, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv: list[str] | None) -> int:
    from .args import OneLineParser

    parser = OneLineParser(prog="kolk", description="Kolk, a programmable streaming platform.")
    parser.add_argument("--version", action="version", version=f"kolk {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="start a local cluster, produce and consume events, stop it")
    demo.add_argument("--events", type=int, default=5000, help="events to produce (default 5,000)")
    demo.add_argument("--storage", action="store_true",
                      help="instead: the storage engine alone, 1,000,000 records and a simulated crash")
    demo.add_argument("--records", type=int, default=1_000_000, help="records for --storage (default 1,000,000)")
    demo.add_argument("--data-dir", help="for --storage: keep the data here instead of a temporary directory")

    from ..sc import main as sc_main
    from ..spu import main as spu_main
    from . import admin as cli_admin
    from . import cert as cli_cert
    from . import consumer_groups as cli_consumer_groups
    from . import top as cli_top
    from . import data as cli_data
    from . import policy as cli_policy
    from . import smartmodule as cli_smartmodule

    sc = sub.add_parser("sc", help="run a stream controller (SC) node")
    sc_main.add_arguments(sc)
    spu_parser = sub.add_parser("spu", help="run a stream processing unit (SPU) node")
    spu_main.add_arguments(spu_parser)
    cli_admin.add_commands(sub)
    cli_data.add_commands(sub)
    cli_smartmodule.add_commands(sub)
    cli_cert.add_commands(sub)
    cli_policy.add_commands(sub)
    cli_consumer_groups.add_commands(sub)
    cli_top.add_commands(sub)

    bench = sub.add_parser("bench", help="produce/consume throughput and latency on a local cluster")
    bench.add_argument("--records", type=int, default=1_000_000, help="100 B records to produce (default 1,000,000)")
    bench.add_argument("--records-1k", type=int, default=200_000, help="1 KiB records (default 200,000)")
    bench.add_argument("--rate", type=int, default=2000, help="records/s for the latency run (default 2,000)")
    bench.add_argument("--seconds", type=float, default=5.0, help="length of the latency run (default 5)")

    from ..node.config_file import expand_argv

    # kolk sc/spu --config FILE: the file's flags go first, so the command line overrides them.
    args = parser.parse_args(expand_argv(sys.argv[1:] if argv is None else argv, {"sc": sc, "spu": spu_parser}))
    if args.command in PRIVATE_COMMANDS:
        # What these write (the profile, keys and certificates, a local cluster's data and
        # logs, and the processes they start) is private to the user whatever the umask;
        # DESIGN.md §7 and docs/operations.md "Files and permissions".
        os.umask(0o077)
    if args.command == "bench":
        from .bench import run_bench

        return run_bench(args.records, args.records_1k, args.rate, args.seconds)
    if args.command == "sc":
        return sc_main.run_sc(args)
    if args.command == "spu":
        return spu_main.run_spu(args)
    if args.command in cli_admin.COMMANDS:
        return cli_admin.dispatch(args)
    if args.command in cli_data.COMMANDS:
        return cli_data.dispatch(args)
    if args.command in cli_smartmodule.COMMANDS:
        return cli_smartmodule.dispatch(args)
    if args.command in cli_cert.COMMANDS:
        return cli_cert.dispatch(args)
    if args.command in cli_policy.COMMANDS:
        return cli_policy.dispatch(args)
    if args.command in cli_consumer_groups.COMMANDS:
        return cli_consumer_groups.dispatch(args)
    if args.command in cli_top.COMMANDS:
        return cli_top.dispatch(args)
    if args.command == "demo":
        from .demo import run_cluster_demo, run_storage_demo

        if args.storage:
            if args.records < 1000:
                parser.error("--records must be at least 1000")
            return run_storage_demo(args.records, args.data_dir)
        if not 1 <= args.events <= 10_000_000:
            parser.error("--events must be 1 to 10,000,000")
        return run_cluster_demo(args.events)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
