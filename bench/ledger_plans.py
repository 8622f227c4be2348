"""Why the claim limits the ledger: its plans, by EXPLAIN ANALYZE, half-way through a backfill.

    python -m bench.ledger_plans [--files 20000] [--database server|embedded]

A fresh database (as `python -m bench.ledger` makes), the daemon's schema, N file versions
discovered; then one in-process bench daemon (`bench.ledger_daemon.carry`, claims of 32) takes
half of them through hash, upload and store to track, as a backfill does. Then the claim
(queries.sql `claim`) is explained, run for real in a transaction that is rolled back, with
the plan the server makes for given values (a custom plan: what the first five executions of
a prepared statement get) and the one for any values (the generic plan, which asyncpg's
prepared statements can get from the sixth on), before and after an `ANALYZE dz_files` (which
autovacuum runs only after a minute or so on a fresh table). Prints each plan and its time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any, cast

import asyncpg

from bench import infra
from bench.ledger import ZONE, prepare, settings_document
from bench.ledger_daemon import carry
from daemon import config
from daemon.database import sql
from daemon.ledger import Ledger
from daemon.sessions import Sessions
from daemon.stages import Env

OWNER = "bench-plans"
# the claim's parameters as the daemon passes them: owner, lease_s, zones, limit, held ids
VALUES = f"'{OWNER}', 60, '{{{ZONE}}}', 32, '{{}}'"


async def explain(url: str, mode: str, analyze: bool) -> list[str]:
    """The claim's plan under `plan_cache_mode = mode`, run in a transaction rolled back."""
    conn = await asyncpg.connect(url)
    try:
        if analyze:
            await conn.execute("ANALYZE dz_files")
        await conn.execute(f"SET plan_cache_mode = {mode}")
        await conn.execute("PREPARE claim (text, float8, text[], int, bigint[]) AS "
                           + sql("claim"))
        transaction = conn.transaction()
        await transaction.start()
        plan = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE claim ({VALUES})")
        await transaction.rollback()
        return [str(row[0]) for row in plan]
    finally:
        await conn.close()


async def half_way(document: dict[str, Any], base: Path, files: int) -> int:
    """Claims of 32 carried to track (or done) until half the files have moved."""
    settings = config.parse(document, base, env={})
    async with Sessions(settings) as sessions:
        ledger = Ledger(sessions, [ZONE], OWNER, settings.pipeline.lease_s)
        env = Env(settings, sessions, ledger, cast(Any, None))  # no embedder
        moved = 0
        while moved < files // 2:
            rows = await ledger.claim(32)
            await carry(rows, env)
            moved += len(rows)
        return moved


async def show(url: str, label: str, analyses: tuple[bool, ...]) -> None:
    """The claim's custom and generic plans, without statistics and (if asked) with them."""
    for analyze in analyses:
        for mode in ("force_custom_plan", "force_generic_plan"):
            await _show(url, label, mode, analyze)


async def _show(url: str, label: str, mode: str, analyze: bool) -> None:
    lines = await explain(url, mode, analyze)
    print(f"--- {label}; {mode}; {'after' if analyze else 'before'} ANALYZE dz_files")
    print("\n".join(lines) + "\n", flush=True)


async def run(url: str, work: Path, files: int) -> None:
    document = settings_document(work, url, 1, 32)
    await prepare(document, work, files, 0)
    await show(url, f"{files} files discovered, none moved", (False,))
    moved = await half_way(document, work, files)
    await show(url, f"{moved} of {files} files moved to track", (False, True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_plans",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--database", choices=("server", "embedded"), default="server")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dz-bench-plans-") as work:
        db = infra.open_database(args.database, "ledger_plans", Path(work) / "var")
        try:
            asyncio.run(run(db.url(), Path(work), args.files))
        finally:
            db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
