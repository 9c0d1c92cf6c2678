"""Hot reload under load: N consecutive code reloads of one plugin while a
client sends commands steadily.

    .venv/bin/python benchmarks/hot_reload.py [--reloads 200] [--rate 25]

A real `precinct up` with the `counter` fixture plugin. A client with the core
credentials publishes `!count` chat events at a steady rate (each with its
own correlation id) for the whole run and records every dispatcher outcome
(`precinct.dispatch.console.result`) and chat answer. Each reload rewrites
the plugin's code (a new `REVISION`, renamed into place); it counts as
successful when answers from the new revision arrive within 60 s. A command
is lost when it has no outcome when the run ends, failed when its outcome is
not "ok" (timeout, no responders), duplicated when it got two outcomes or two
answers. Target (issue 8): >= 99 % successful reloads, zero lost commands.

`--write-data`: the fixture is granted `file_system_write` and journals every
command in its data dir (as root: the overlap with the read-only/read-write
data dir flip, whose gap is the old instance's drain plus the new one's
initialize()).

Prints a Markdown section; `benchmarks/run.py --only hot_reload` puts it in
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from reload_support import CommandLoad  # noqa: E402
from runtime_support import FIXTURES, Up, copy_plugin  # noqa: E402
from test_hot_reload import set_revision  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def say(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


async def _run(up: Up, folder: Path, reloads: int, rate: float) -> dict:
    load = CommandLoad(up.state_dir, rate=rate)
    await load.start()
    await load.wait_for(lambda a: a[0] == 0, timeout=60)
    ok, took = 0, []
    for revision in range(1, reloads + 1):
        started = time.monotonic()
        set_revision(folder, revision)
        try:
            await load.wait_for(lambda a, r=revision: a[0] == r, timeout=60)
            ok += 1
            took.append(time.monotonic() - started)
        except AssertionError:
            say(f"reload {revision}: no answer from the new revision within 60 s")
        if revision % 20 == 0:
            s = load.summary()
            say(f"{revision}/{reloads} reloads, {ok} ok; {s['sent']} commands, {s['lost']} lost so far")
    await load.stop(settle=15)
    return {"ok": ok, "took": took, **load.summary()}


def bench_hot_reload(reloads: int = 200, rate: float = 25.0, write_data: bool = False) -> str:
    with tempfile.TemporaryDirectory(prefix="precinct-bench-reload-") as tmp:
        plugins = Path(tmp) / "plugins"
        plugins.mkdir()
        folder = copy_plugin(FIXTURES / "counter", plugins)
        if write_data:
            manifest = folder / "plugin.yaml"
            manifest.write_text(manifest.read_text().replace("  greeting: hello\n", "  greeting: hello\n  journal: true\n")
                                + "permissions: [file_system_write]\n")
        up = Up(plugins, Path(tmp) / "state")
        try:
            up.wait_running("counter")
            started = time.monotonic()
            r = asyncio.run(_run(up, folder, reloads, rate))
            wall = time.monotonic() - started
            log = up.output()
            handovers, overlaps = log.count("handing over"), log.count("beside the old one")
            mode = (f"{overlaps} overlap(s) (the new instance started beside the old one, which was drained "
                    f"once the new one answered its health ping), {handovers} handover(s) (old drained, then new "
                    "started; the dispatcher retries the gap)")
            if write_data:
                mode += (f"; {log.count('data dir switched to the new instance')} data dir flip(s), "
                         f"{log.count('data dir flip failed')} failed flip(s)")
        finally:
            up.stop()
    success = 100.0 * r["ok"] / reloads
    rows = [
        "## Hot reload under load",
        "",
        f"{reloads} consecutive code reloads of the `counter` fixture"
        f"{' (granted file_system_write, journalling every command in its data dir)' if write_data else ''} while a client sent `!count` "
        f"at {rate:g}/s through the dispatcher ({r['sent']} commands over {wall:.0f} s). Mode: {mode}. "
        "A reload succeeds when the new revision answers within 60 s; a command is lost without an "
        "outcome, failed with a non-ok outcome, duplicated with two outcomes or answers.",
        "",
        "| figure | value | target |",
        "|---|---|---|",
        f"| successful reloads | {r['ok']}/{reloads} ({success:.1f} %) | >= 99 % |",
        f"| lost commands | {r['lost']} | 0 |",
        f"| failed commands (timeout / no responders) | {r['failed']} | 0 |",
        f"| commands answered twice | {r['duplicated']} | 0 |",
        f"| edit -> first answer from the new revision, p50 / p99 | "
        f"{statistics.median(r['took']) if r['took'] else float('nan'):.2f} s / {pct(r['took'], 0.99):.2f} s | |",
        f"| command round trip during the run, p99 / max (in a handover, commands sent in the gap wait for the new instance) | {r['p99_ms']} ms / {r['max_ms']} ms | p99 ≤ 50 ms (no gap) |",
        "",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reloads", type=int, default=200)
    parser.add_argument("--rate", type=float, default=25.0)
    parser.add_argument("--write-data", action="store_true",
                        help="grant the fixture file_system_write and journal each command in its data dir")
    args = parser.parse_args()
    print(bench_hot_reload(args.reloads, args.rate, args.write_data))


if __name__ == "__main__":
    main()
