"""Whole-row writes to projection tables: the table as they see it, and their SQL.

A projection that folds a batch in memory (`store.rowset.RowSet`) writes each row it
touched once, whatever the number of events that touched it: ``put_rows`` inserts or
replaces whole rows by key, ``delete_rows`` removes rows by key, and ``committed_rows``
loads the rows a batch needs. Rows are dicts (column -> value). On PostgreSQL a write is
one statement whatever its rows: they go as one JSON document (msgspec encodes it in a
few microseconds; ``json_populate_recordset`` types it by the table's own row type), so a
batch of a thousand rows costs one statement, and Python no per-value encoding. On SQLite
each row is one execution of a statement with named parameters, on the writer thread.
"""

from __future__ import annotations

from functools import cache

import msgspec

#: the column types whole-row writes know (a key lookup casts its array to one)
TYPES = frozenset({"text", "bigint", "integer", "double precision"})
#: SQLite's limit on host parameters is 999 in old builds: stay below it per statement
SQLITE_IN_CHUNK = 500


class Table(msgspec.Struct, frozen=True):
    """A table's name, its columns (name, SQL type) and how many leading columns are its
    key (its primary key, which ``ON CONFLICT`` names)."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.key <= len(self.columns):
            raise ValueError(f"{self.name}: the key must be 1 to {len(self.columns)} columns")
        unknown = {t for _, t in self.columns} - TYPES
        if unknown:
            raise ValueError(f"{self.name}: unknown column types {sorted(unknown)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)

    def index(self, column: str) -> int:
        """The position of ``column`` in a row."""
        return self.names.index(column)


def _on_conflict(table: Table) -> str:
    """What a put does to a row whose key exists: replace every other column."""
    update = ", ".join(f"{n} = excluded.{n}" for n in table.names[table.key:])
    return (f"ON CONFLICT ({', '.join(table.names[:table.key])})"
            + (f" DO UPDATE SET {update}" if update else " DO NOTHING"))


@cache
def pg_put(table: Table) -> str:
    """Insert or replace the rows of a JSON array of objects ($1)."""
    names = ", ".join(table.names)
    return (f"INSERT INTO {table.name} ({names}) SELECT {names} FROM"
            f" json_populate_recordset(NULL::{table.name}, $1::json) {_on_conflict(table)}")


@cache
def pg_delete(table: Table) -> str:
    """Delete the rows whose keys a JSON array of objects ($1) gives."""
    match = " AND ".join(f"{table.name}.{n} = d.{n}" for n in table.names[:table.key])
    return (f"DELETE FROM {table.name} USING"
            f" json_populate_recordset(NULL::{table.name}, $1::json) AS d WHERE {match}")


@cache
def pg_select(table: Table, column: str) -> str:
    """The rows whose ``column`` is one of an array."""
    kind = dict(table.columns)[column]
    return (f"SELECT {', '.join(table.names)} FROM {table.name}"
            f" WHERE {column} = ANY($1::{kind}[])")


@cache
def sqlite_put(table: Table) -> str:
    names = table.names
    return (f"INSERT INTO {table.name} ({', '.join(names)})"
            f" VALUES ({', '.join(':' + n for n in names)}) {_on_conflict(table)}")


@cache
def sqlite_delete(table: Table) -> str:
    return (f"DELETE FROM {table.name} WHERE "
            + " AND ".join(f"{n} = :{n}" for n in table.names[:table.key]))


def sqlite_select(table: Table, column: str, count: int) -> str:
    return (f"SELECT {', '.join(table.names)} FROM {table.name}"
            f" WHERE {column} IN ({', '.join('?' * count)})")
