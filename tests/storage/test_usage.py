"""The usage ledger: rows batched off the request path, totals by day / model / key."""

from __future__ import annotations

import asyncio
from pathlib import Path

from vlmserve.storage.db import Database
from vlmserve.storage.usage import UsageLedger, UsageRow

DAY = 86400.0


def row(
    at: float, key: str, model: str, prompt: int, completion: int, status: str = "ok"
) -> UsageRow:
    return UsageRow(at, key, key + "-name", model, prompt, 0, 0, 0, completion, status, "t")


def test_record_writes_nothing_until_the_batch_is_flushed(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int, int]:
        db = Database(tmp_path / "vlmserve.db")
        ledger = UsageLedger(db, flush_s=60)
        try:
            ledger.record(row(1.0, "a", "m", 3, 4))
            before = len(await ledger.rows())
            written = await ledger.flush()
            return before, written, len(await ledger.rows())
        finally:
            await db.close()

    assert asyncio.run(scenario()) == (0, 1, 1)


def test_background_flush_and_close_write_every_row(tmp_path: Path) -> None:
    async def scenario() -> int:
        db = Database(tmp_path / "vlmserve.db")
        ledger = UsageLedger(db, flush_s=0.05)
        await ledger.start()
        for i in range(50):
            ledger.record(row(float(i), "a", "m", 1, 1))
            if i == 25:
                await asyncio.sleep(0.2)  # one batch on the timer, the rest at close
        await ledger.close()
        count = len(await ledger.rows())
        await db.close()
        return count

    assert asyncio.run(scenario()) == 50


def test_totals_group_by_day_model_and_key(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[dict[str, object]], ...]:
        db = Database(tmp_path / "vlmserve.db")
        ledger = UsageLedger(db)
        for r in (
            row(0.0, "a", "m1", 10, 1),
            row(DAY + 5, "a", "m2", 20, 2),
            row(DAY + 6, "b", "m1", 30, 3, status="aborted"),
        ):
            ledger.record(r)
        await ledger.flush()
        try:
            return (
                await ledger.totals(),
                await ledger.totals(by="day"),
                await ledger.totals(by="model"),
                await ledger.totals(key_name="a-name", since=DAY),
            )
        finally:
            await db.close()

    everything, by_day, by_model, a_since = asyncio.run(scenario())
    assert everything[0]["requests"] == 3 and everything[0]["total_tokens"] == 66
    assert [(d["day"], d["prompt_tokens"]) for d in by_day] == [
        ("1970-01-01", 10),
        ("1970-01-02", 50),
    ]
    assert [(m["model"], m["completion_tokens"]) for m in by_model] == [("m1", 4), ("m2", 2)]
    assert a_since[0]["requests"] == 1 and a_since[0]["prompt_tokens"] == 20
