"""Tables of the SQL backends, and the statements that touch them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    select,
)

__all__ = ["SQLSchema"]


class SQLSchema:
    """The events, owners and snapshots tables of one namespace."""

    def __init__(self, namespace: str) -> None:
        self.metadata = MetaData()
        self.events = Table(
            f"{namespace}_events",
            self.metadata,
            # INTEGER PRIMARY KEY is SQLite's rowid: the cheapest ordered key there.
            Column(
                "position",
                BigInteger().with_variant(Integer, "sqlite"),
                primary_key=True,
                autoincrement=False,
            ),
            Column("event_id", String(64), nullable=False, unique=True),
            # Not indexed: nothing looks events up by session in SQL (folds read in
            # position order), and every index costs each append.
            Column("session_id", String(128), nullable=True),
            Column("at", Float, nullable=False),
            Column("worker", String(128), nullable=False),
            Column("data", LargeBinary, nullable=False),
            # The record's link in the hash chain (eventlog.chain); NULL for records
            # written before chains existed.
            Column("chain", LargeBinary, nullable=True),
        )
        # One row: the log start position (records below it are archived) and the link
        # of the record before it. No row: nothing was ever trimmed (start 1).
        self.start = Table(
            f"{namespace}_start",
            self.metadata,
            Column("id", Integer, primary_key=True, autoincrement=False),
            Column("position", BigInteger, nullable=False),
            Column("chain", LargeBinary, nullable=False),
        )
        self.owners = Table(
            f"{namespace}_owners",
            self.metadata,
            Column("session_id", String(128), primary_key=True),
            Column("owner", String(128), nullable=False),
        )
        self.snapshots = Table(
            f"{namespace}_snapshots",
            self.metadata,
            Column("name", String(64), primary_key=True),
            Column("position", BigInteger, nullable=False),
            Column("data", LargeBinary, nullable=False),
        )
        events = self.events
        self.head = select(func.coalesce(func.max(events.c.position), 0))
