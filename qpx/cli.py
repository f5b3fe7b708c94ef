"""Command line: ``qpxd [run] -c FILE``, ``qpxd check``, ``qpxd match``, ``qpxd version``.

Exit codes: 0 ok, 1 configuration error, 2 usage error, 3 ``match`` fell through to the
default action.  Nothing here imports gevent: ``check`` and ``match`` run anywhere, and
``run`` hands over to the master (:mod:`qpx.arbiter`), which forks the gevent workers.
"""

from __future__ import annotations

import argparse
import sys

from . import __version__

COMMANDS = ("run", "check", "match", "version", "gen-ca")
DEFAULT_CONFIG = "/etc/qpx/qpx.yaml"
CONFIG_HELP = ("configuration file (repeat to merge several, later wins; default "
               f"{DEFAULT_CONFIG})")

EPILOG = """\
examples:
  qpxd -c /etc/qpx/qpx.yaml              run (same as: qpxd run -c ...; -c defaults to it)
  qpxd check -c base.yaml -c site.yaml   validate; files merge in order, later wins
  qpxd -t -c qpx.yaml                    the same as check (nginx's -t)
  qpxd -v                                the version (also --version, qpxd version)
  qpxd gen-ca -d /var/lib/qpxd           make the TLS inspection CA (ca.crt, ca.key)
  qpxd match -c qpx.yaml --listener forward --src-ip 10.1.2.3 --host ads.example.com
  kill -HUP $(cat /run/qpxd/qpxd.pid)   reload with zero failed connections
  kill -USR2 $(cat /run/qpxd/qpxd.pid)  upgrade to the installed qpxd, same sockets

signals to the master: HUP reload, TERM graceful stop, INT/QUIT fast stop,
USR1 reopen logs, TTIN/TTOU one worker more/fewer, USR2 binary upgrade.
systemd socket activation (LISTEN_FDS) is used when present.
exit codes: 0 ok, 1 config error, 2 usage error, 3 (match) default action applied.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qpxd", description="qpxd: forward / reverse / transparent HTTP proxy daemon.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--version", action="version", version=f"qpxd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon (the default command)",
                         description="Start the master, bind every listener, fork the "
                                     "workers and serve until TERM/INT.")
    run.add_argument("-c", "--config", action="append", metavar="FILE", help=CONFIG_HELP)
    run.add_argument("--pid", metavar="FILE", help="write the master's PID to FILE")

    check = sub.add_parser("check", help="validate configuration files and exit",
                           description="Load, validate and compile the configuration "
                                       "exactly as 'run' would, print every problem, exit.")
    check.add_argument("-c", "--config", action="append", metavar="FILE", help=CONFIG_HELP)

    match = sub.add_parser(
        "match", help="show which rule or route a request would hit",
        description="Evaluate the rules of one listener (or the routes of one reverse "
                    "proxy) for a described request and print which one fires and why the "
                    "earlier ones did not.")
    match.add_argument("-c", "--config", action="append", metavar="FILE", help=CONFIG_HELP)
    who = match.add_mutually_exclusive_group(required=True)
    who.add_argument("--listener", metavar="NAME", help="a forward/transparent listener")
    who.add_argument("--reverse", metavar="NAME", help="a reverse proxy")
    match.add_argument("--src-ip", metavar="IP")
    match.add_argument("--dst-port", metavar="N", type=int)
    match.add_argument("--host", metavar="HOST")
    match.add_argument("--sni", metavar="NAME")
    match.add_argument("--method", metavar="METHOD")
    match.add_argument("--path", metavar="PATH", help="path and query, e.g. /a?b=1")
    match.add_argument("--header", action="append", default=[], metavar="'Name: value'",
                       help="a request header (repeatable)")

    gen = sub.add_parser(
        "gen-ca", help="make the TLS inspection CA",
        description="Write ca.crt and ca.key (mode 0600) into DIR: ECDSA P-256, ten "
                    "years. qpxd run makes one in state_dir when none exists; this makes "
                    "it ahead of time, so clients can be told to trust it first.")
    gen.add_argument("-d", "--dir", required=True, metavar="DIR",
                     help="the directory (state_dir, or tls_inspection.ca)")
    gen.add_argument("--force", action="store_true", help="replace an existing CA")

    sub.add_parser("version", help="print the version")
    return p


TRUST_HELP = """Trust it on the clients that go through the inspecting listener:
  Debian/Ubuntu:  cp {cert} /usr/local/share/ca-certificates/qpxd-ca.crt
                  && update-ca-certificates
  Firefox:        Settings > Privacy & Security > Certificates > View Certificates >
                  Authorities > Import {cert}
  Chromium (NSS): certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n qpxd-ca -i {cert}
  curl:           curl --cacert {cert} -x http://PROXY:PORT https://example.com/
  Python:         requests.get(url, proxies=..., verify="{cert}")
Keep {key} private (mode 0600): it signs certificates for any site."""


def cmd_gen_ca(args) -> int:
    from .ca import CaError, generate

    try:
        cert, key = generate(args.dir, force=args.force)
    except CaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: cannot write the CA into {args.dir}: {e.strerror or e}",
              file=sys.stderr)
        return 1
    print(f"wrote {cert} and {key}")
    print(TRUST_HELP.format(cert=cert, key=key))
    return 0


def _load(files: list[str]):
    from .config import ConfigError, load_config
    from .policy import compile_config

    try:
        cfg, warnings = load_config(files)
        policy = compile_config(cfg)
    except ConfigError as e:
        for issue in e.issues:
            print(f"error: {issue}", file=sys.stderr)
        n = len(e.issues)
        print(f"config invalid: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return None, None
    from .preflight import preflight

    errors, host_warnings = preflight(cfg)
    for w in list(warnings) + host_warnings:
        print(f"warning: {w}", file=sys.stderr)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        n = len(errors)
        print(f"config invalid: {n} error{'s' if n != 1 else ''}", file=sys.stderr)
        return None, None
    return cfg, policy


def cmd_check(args) -> int:
    cfg, _ = _load(args.config)
    if cfg is None:
        return 1
    print(f"config ok: {len(cfg.listeners)} listeners, {len(cfg.reverse)} reverse")
    return 0


def cmd_match(args) -> int:
    from .matchcli import run_match

    cfg, policy = _load(args.config)
    if cfg is None:
        return 1
    return run_match(cfg, policy, args)


def cmd_run(args) -> int:
    from .arbiter import Arbiter

    cfg, policy = _load(args.config)
    if cfg is None:
        return 1
    from .ca import CaError
    from .inspection import ensure_ca

    try:
        for cert in ensure_ca(policy):
            print(f"warning: generated the TLS inspection CA {cert}: the clients of the "
                  "inspecting listeners must trust it (qpxd gen-ca --help)", file=sys.stderr)
    except (CaError, OSError) as e:
        print(f"error: cannot make the TLS inspection CA: {e}", file=sys.stderr)
        return 1
    return Arbiter(args.config, cfg, policy, pidfile=args.pid).run()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-t" in argv and (not argv or argv[0] not in COMMANDS):
        argv.remove("-t")  # nginx's habit: -t tests the configuration
        argv.insert(0, "check")
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "-v", "--version"):
        argv.insert(0, "run")
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command == "version":
        print(f"qpxd {__version__}")
        return 0
    if args.command != "gen-ca" and not args.config:
        args.config = [DEFAULT_CONFIG]
    handler = {"run": cmd_run, "check": cmd_check, "match": cmd_match,
               "gen-ca": cmd_gen_ca}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
