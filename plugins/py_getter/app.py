"""py_getter: loads a cache miss from the host's SQL database, in Python.

The same getter as plugins/db_getter (Rust): it runs the statement in config key `query`
(default DEFAULT_QUERY) with the cache key bound as `?1` (text) and returns the first column of
the first row: integers and reals as decimal text (630 -> b"630"), text as UTF-8, blobs as they
are. No row, or a NULL, is "not found". A failed query is the call's error, as the host
reported it.

Built into a WebAssembly component by componentize-py (see plugins/build.sh); with the demo
database, key `Tom` -> `630`.
"""

from typing import Optional

from wit_world import exports
from wit_world.exports.getter import Found, Lookup, Lookup_Found, Lookup_NotFound
from wit_world.imports import config, log, sql
from wit_world.imports.types import PluginInfo

DEFAULT_QUERY = "SELECT score FROM scores WHERE name = ?1"


class Getter(exports.Getter):
    def info(self) -> PluginInfo:
        return PluginInfo(name="py_getter", version="0.1.0")

    def get(self, group: str, key: str) -> Lookup:
        statement = config.get("query") or DEFAULT_QUERY
        # Raises componentize_py_types.Err(error) when the host refuses or fails the query;
        # left uncaught, it becomes this call's error unchanged.
        rows = sql.query(statement, [sql.Value_Text(key)], 1)
        value = value_bytes(rows[0][0]) if rows and rows[0] else None
        if value is None:
            log.log(log.Level.DEBUG, f"{group}/{key}: not found")
            return Lookup_NotFound()
        log.log(log.Level.DEBUG, f"{group}/{key}: found, {len(value)} bytes")
        return Lookup_Found(Found(value=value, expires_at_ms=None, stale_ms=None))


def value_bytes(value: sql.Value) -> Optional[bytes]:
    """The bytes a column value is served as; None for NULL."""
    if isinstance(value, sql.Value_Integer):
        return str(value.value).encode()
    if isinstance(value, sql.Value_Real):
        # Rust prints 3.0 as "3"; match db_getter.
        text = repr(value.value)
        return (text[:-2] if text.endswith(".0") else text).encode()
    if isinstance(value, sql.Value_Text):
        return value.value.encode()
    if isinstance(value, sql.Value_Blob):
        return value.value
    return None
