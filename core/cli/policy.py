"""``kolk policy``: check, explain, apply and show access policies (docs/policy.md).

``check`` and ``explain`` run on this machine only, on a file: ``check`` finds the first
problem and prints it as ``FILE:LINE: FIELD: PROBLEM`` (and warnings for things that are legal
but probably wrong); ``explain`` answers one request the way every node would, naming the
deciding rule. ``apply`` checks the file, then stores it as the metadata object
``policy/active`` on any SC, so every node enforces the same version; a new version must be
higher than the one in force, so a revoked policy cannot be replayed, and the SC refuses a
policy that would deny the applier ``admin`` on ``cluster`` unless ``--allow-lockout`` says
so. ``show`` prints the policy in force; a caller who may not read it is told that one is in
force (exit 1), never "no policy". Errors print one line and exit with status 1; ``--json``
prints machine output.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from typing import Any

from ..metadata.specs import PolicySpec
from ..protocol.errors import KolkError, PermissionDeniedError, VersionConflictError
from ..security.policy import (ACTIONS, Policy, PolicyError, check_request, parse_address, parse_policy,
                               parse_resource)
from ..security.policy_parse import POLICY_BYTES_MAX
from .admin import _print, _sc_option, resolve_sc
from .files import FileProblem, read_regular_file

COMMANDS = ("policy",)
KIND, NAME = "policy", "active"  # the metadata object every node watches
SHA_SHOWN = 12


def add_commands(sub: Any) -> None:
    p = sub.add_parser("policy", help="check, explain, apply and show the access policy")
    psub = p.add_subparsers(dest="action", required=True)
    c = psub.add_parser("check", help="check a policy file; print the first problem as FILE:LINE: FIELD: PROBLEM")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--json", action="store_true", help="print JSON")
    e = psub.add_parser("explain", help="decide one request with a policy file and say which rule decided")
    e.add_argument("file", metavar="FILE")
    e.add_argument("--identity", required=True, help='certificate CN or SAN URI, or "anonymous"')
    e.add_argument("--from", dest="address", required=True, metavar="IP", help="the client's IP address")
    e.add_argument("--action", dest="request", required=True, choices=ACTIONS, metavar="ACTION",
                   help=", ".join(ACTIONS))
    e.add_argument("--resource", required=True, help="topic:NAME, smartmodule:NAME or cluster")
    e.add_argument("--json", action="store_true", help="print JSON")
    a = psub.add_parser("apply", help="check a policy file and make it the policy every node enforces")
    a.add_argument("file", metavar="FILE")
    a.add_argument("--allow-lockout", action="store_true",
                   help="apply even if the policy denies you admin on cluster (you could not change it again)")
    _sc_option(a)
    _sc_option(psub.add_parser("show", help="the policy in force: its version and source"))


def read_policy(path: str) -> Policy:
    """The checked policy in ``path``; PolicyError (naming the file) or OSError."""
    try:
        data = read_regular_file(path, POLICY_BYTES_MAX, "policy file")
    except FileProblem as e:
        raise PolicyError(path, 1, "", e.problem) from None
    return parse_policy(data, path)


def _check(args: argparse.Namespace) -> int:
    policy = read_policy(args.file)
    spec = policy.spec
    assert spec is not None
    summary = {"file": args.file, "version": policy.version, "sha256": policy.sha256, "rules": len(spec.rules),
               "masks": len(spec.masks), "regions": len(spec.regions), "identities": len(spec.identities),
               "warnings": list(policy.warnings)}
    if not args.json:
        for w in policy.warnings:
            print(f"warning: {w}", file=sys.stderr)
    _print(args, summary, f"{args.file}: policy version {policy.version} is valid: {len(spec.rules)} rule(s), "
                          f"{len(spec.masks)} mask(s), {len(spec.regions)} region(s), "
                          f"{len(spec.identities)} identit{'y' if len(spec.identities) == 1 else 'ies'}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    if parse_address(args.address) is None:
        raise KolkError(f"--from {args.address!r} is not an IP address")
    try:
        kind, name = parse_resource(args.resource)
    except ValueError as e:
        raise KolkError(f"--resource {e}") from None
    try:
        check_request(args.request, args.resource)  # read is for groups; on a group read/describe/admin
    except ValueError as e:
        raise KolkError(f"--action {e}") from None
    policy = read_policy(args.file)
    d = policy.decide(args.identity, args.address, args.request, args.resource)
    roles, regions = policy.roles_of(args.identity), policy.regions_of(args.address)
    masks = policy.masks(args.identity, args.address, name) if d.allowed and kind == "topic" and \
        args.request == "consume" else []
    rule = policy.rules[d.rule - 1] if d.rule is not None else None
    value = {"allowed": d.allowed, "rule": d.rule, "reason": d.reason, "identity": args.identity,
             "roles": roles, "address": args.address, "regions": regions, "action": args.request,
             "resource": args.resource, "masks": [{"field": f, "with": w} for f, w in masks],
             "rule_line": rule.line if rule else None, "rule_description": rule.description if rule else None,
             "policy_version": policy.version, "sha256": policy.sha256}
    lines = [f"{'ALLOWED' if d.allowed else 'DENIED'}: {d.reason}"]
    if rule is not None:
        lines.append(f"rule {rule.number} is at {args.file}:{rule.line}"
                     + (f": {rule.description}" if rule.description else ""))
    lines.append(f"identity {args.identity}: {'roles ' + ', '.join(roles) if roles else 'no roles'}")
    lines.append(f"address {args.address}: {'regions ' + ', '.join(regions) if regions else 'in no region'}")
    if masks:
        lines.append("masked fields: " + ", ".join(f"{f} -> {w!r}" for f, w in masks))
    _print(args, value, "\n".join(lines))
    return 0


# ---------------------------------------------------------------- apply and show (talk to an SC)

async def _apply(args: argparse.Namespace) -> int:
    from ..client.admin import AdminClient
    from .admin import client_tls

    policy = read_policy(args.file)
    client = AdminClient(resolve_sc(args.sc), tls=client_tls(args))
    current = await _policy_in_force(client)
    in_force = PolicySpec.from_dict(current["spec"]).version if current else 0
    if policy.version <= in_force:
        line = next((n for n, text in enumerate(str(policy.source).splitlines(), 1)
                     if re.match(r"\s*version\s*=", text)), 1)
        raise PolicyError(args.file, line, "version", f"{policy.version} is not higher than the version in force "
                                                   f"({in_force}): raise it to apply this file")
    spec = policy.to_spec()
    try:
        # Compare-and-set on the object: two racing applies cannot both win.
        await client.put_object(KIND, NAME, spec, expected_version=current["version"] if current else -1,
                                allow_lockout=args.allow_lockout)
    except VersionConflictError:
        raise KolkError("the policy in force changed while applying: run kolk policy show, then apply again") \
            from None
    for w in policy.warnings:
        if not args.json:
            print(f"warning: {w}", file=sys.stderr)
    _print(args, {"applied": policy.version, "sha256": policy.sha256, "previous": in_force or None},
           f"policy version {policy.version} applied (sha256 {str(policy.sha256)[:SHA_SHOWN]}, "
           f"{len(policy.rules)} rule(s)); every node now enforces it"
           + (f" instead of version {in_force}" if in_force else ""))
    return 0


async def _policy_in_force(client: Any) -> dict[str, Any] | None:
    """``policy/active``, or None when there truly is none. A caller who may not read it gets
    the SC's one line ("a policy is in force but ... may not read it (denied: ...)") as a
    KolkError: never None, which would say everything is allowed."""
    try:
        return await client.get_object(KIND, NAME)
    except PermissionDeniedError as e:
        raise KolkError(str(e)) from None


async def _show(args: argparse.Namespace) -> int:
    from ..client.admin import AdminClient
    from .admin import client_tls

    client = AdminClient(resolve_sc(args.sc), tls=client_tls(args))
    current = await _policy_in_force(client)
    if current is None:
        _print(args, None, "no policy in force: everything is allowed for everyone")
        return 0
    spec = PolicySpec.from_dict(current["spec"])
    source = spec.source or ""
    ok = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest() == spec.sha256
    _print(args, {"version": spec.version, "sha256": spec.sha256, "source": source,
                  "metadata_version": current.get("version"), "status": current.get("status", {})},
           f"# policy version {spec.version}, sha256 {spec.sha256}"
           + ("" if ok else " (DOES NOT MATCH the source)") + "\n" + source.rstrip("\n"))
    return 0


def dispatch(args: argparse.Namespace) -> int:
    try:
        if args.action == "check":
            return _check(args)
        if args.action == "explain":
            return _explain(args)
        from ..client.admin import run

        if args.action == "apply":
            return run(lambda: _apply(args))
        if args.action == "show":
            return run(lambda: _show(args))
        raise KolkError(f"unknown action {args.action}")
    except PolicyError as e:
        print(str(e), file=sys.stderr)  # FILE:LINE: FIELD: PROBLEM, as a compiler prints it
    except KolkError as e:
        print(f"kolk policy {args.action}: {e}", file=sys.stderr)
    except OSError as e:
        print(f"kolk policy {args.action}: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    return 1
