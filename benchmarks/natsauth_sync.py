"""How long natsauth's Identity takes to stage a fleet (no server, no network).

    .venv/bin/python benchmarks/natsauth_sync.py [--plugins 1000] [--revoke 300]

Plans come from compile_plan (each plugin with its own command, like
benchmarks/operator_scale.py). One Identity in a fresh state directory:
`prepare` with every plugin new (keys, creds and JWTs issued and made
durable), `prepare` again with nothing changed, then `prepare` with the
last `--revoke` plugins gone (each revoked into removed.json). This is the
staging part of `Identity.sync`: what sync adds is the pushes over NATS.
Prints a Markdown table. Nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from precinct.natsauth.identity import Identity
from precinct.plan.sandbox import compile_plan
from precinct.spec.model import load_manifest
from precinct.spec.ownership import Plugin


def plans(count: int) -> list:
    out = []
    for i in range(count):
        loaded = load_manifest({"name": f"bench-{i:04d}", "version": "1.0.0",
                                "commands": {f"c{i:04d}": f"bench-{i:04d}.run"}})
        out.append(compile_plan(Plugin(loaded.id, loaded.without_name())))
    return out


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plugins", type=int, default=1000)
    parser.add_argument("--revoke", type=int, default=300)
    args = parser.parse_args()
    fleet = plans(args.plugins)
    with tempfile.TemporaryDirectory() as state:  # ext4 here; a tmpfs would hide fsync costs
        identity = Identity(Path(state) / "nats")
        rows = [
            (f"{args.plugins} new plugins", timed(lambda: identity.prepare(fleet))),
            (f"{args.plugins} plugins, nothing changed", timed(lambda: identity.prepare(fleet))),
            (f"{args.revoke} of them revoked", timed(lambda: identity.prepare(fleet[:args.plugins - args.revoke]))),
        ]
    print("| step | seconds |\n|---|---|")
    for step, seconds in rows:
        print(f"| {step} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
