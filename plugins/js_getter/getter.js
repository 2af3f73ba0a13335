// js_getter: loads a cache miss from the host's SQL database, in JavaScript.
//
// The same getter as plugins/db_getter (Rust): it runs the statement in config key `query`
// (default DEFAULT_QUERY) with the cache key bound as `?1` (text) and returns the first column
// of the first row: integers and reals as decimal text (630 -> "630"), text as UTF-8, blobs as
// they are. No row, or a NULL, is "not found". A failed query is the call's error, as the host
// reported it.
//
// Built into a WebAssembly component by componentize-js (see plugins/build.sh); with the demo
// database, key `Tom` -> `630`.

import { get as configGet } from 'geecache:plugin/config@0.1.0';
import { log } from 'geecache:plugin/log@0.1.0';
import { query } from 'geecache:plugin/sql@0.1.0';

const DEFAULT_QUERY = 'SELECT score FROM scores WHERE name = ?1';
const utf8 = new TextEncoder();

// The bytes a column value is served as; undefined for NULL.
function valueBytes(value) {
  switch (value.tag) {
    case 'integer': // a BigInt
    case 'real':
      return utf8.encode(String(value.val));
    case 'text':
      return utf8.encode(value.val);
    case 'blob':
      return value.val;
    default:
      return undefined;
  }
}

// The exported `getter` interface. A `result<T, error>` is returned as T, or thrown as the error.
export const getter = {
  info() {
    return { name: 'js_getter', version: '0.1.0' };
  },

  get(group, key) {
    const statement = configGet('query') ?? DEFAULT_QUERY;
    const rows = query(statement, [{ tag: 'text', val: key }], 1);
    const first = rows[0]?.[0];
    const value = first === undefined ? undefined : valueBytes(first);
    if (value === undefined) {
      log('debug', `${group}/${key}: not found`);
      return { tag: 'not-found' };
    }
    log('debug', `${group}/${key}: found, ${value.length} bytes`);
    return { tag: 'found', val: { value, expiresAtMs: undefined } };
  },
};
