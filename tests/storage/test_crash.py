"""A process killed mid-upload leaves no visible file, no row and no blob: only a temp file,
which the next start deletes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from vlmserve.storage.files import FileStore

ROOT = Path(__file__).resolve().parents[2]

UPLOADER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from vlmserve.storage.files import FileStore

    async def main() -> None:
        store = FileStore(Path(sys.argv[1]))
        await store.count("alice")  # a complete file first, so the store is not empty
        async with store.upload() as upload:
            await upload.write(b"\\xff\\xd8\\xff" + b"x" * 65536)
            await upload.commit(owner="alice", filename="kept.jpg", purpose="storage",
                                content_type="image/jpeg")
        async with store.upload() as upload:
            await upload.write(b"\\xff\\xd8\\xff" + b"y" * 65536)
            print("writing", flush=True)
            while True:  # a large upload still arriving
                await upload.write(b"y" * 65536)
                await asyncio.sleep(0.005)

    asyncio.run(main())
    """
)


def test_process_killed_mid_upload_leaves_no_visible_file_and_no_stray_blob(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", UPLOADER, str(tmp_path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    leftovers = list((tmp_path / "files" / "tmp").iterdir())
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 65536  # the crash was real
    blobs_before = [p for p in (tmp_path / "files" / "blobs").rglob("*") if p.is_file()]

    async def after_restart() -> None:
        store = FileStore(tmp_path)
        page = await store.list("alice")
        assert [r.filename for r in page.records] == ["kept.jpg"]
        assert await store.count("alice") == 1
        await store.close()

    asyncio.run(after_restart())
    assert list((tmp_path / "files" / "tmp").iterdir()) == []  # cleaned at start-up
    blobs_after = [p for p in (tmp_path / "files" / "blobs").rglob("*") if p.is_file()]
    assert blobs_after == blobs_before and len(blobs_after) == 1  # only the committed file
