from __future__ import annotations

from pathlib import Path

import pytest

from eventlog import LogUnavailable, MemoryEventLog, UnsupportedURL, open_log
from gateway.testing.servers import free_port


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/x", "expected memory://"),
        ("nonsense", "expected memory://"),
        ("sqlite://", "needs a file path"),
        ("sqlite:///x.db?poll_interval=fast", "bad poll_interval"),
        ("sqlite:///x.db?namespace=drop%20table", "namespace"),
        ("memory://?block=1", "unexpected keyword"),
    ],
)
async def test_urls_it_cannot_open_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(UnsupportedURL, match=message):
        await open_log(url)


async def test_memory_url() -> None:
    assert isinstance(await open_log("memory://"), MemoryEventLog)


async def test_sqlite_in_a_missing_directory_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(LogUnavailable, match="unable to open"):
        await open_log(f"sqlite:///{tmp_path}/missing/dir/log.db")


async def test_redis_that_is_down_is_unavailable_and_hides_the_password() -> None:
    with pytest.raises(LogUnavailable) as raised:
        await open_log(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    assert "hunter2" not in str(raised.value)
    assert ":***@127.0.0.1" in str(raised.value)
