// js_http_getter: loads a cache miss from an HTTP origin with fetch(), in JavaScript.
//
// The same getter as plugins/http_getter (Rust): `GET {base}/{key}` with config key `base`
// (e.g. https://api.example.com/users), the key as one percent-encoded path segment. The
// operator must allow the origin: --plugin-http js_http_getter=https://api.example.com.
// 2xx is found (Cache-Control max-age / s-maxage as the entry's expiry; no-store, no-cache
// and private expire it at once), 404 and 410 not found, 429 and 5xx unavailable, anything
// else an error. fetch() follows redirects, each checked by the host against the allowlist.
//
// Built by componentize-js with its `http` feature (fetch over wasi:http/outgoing-handler);
// the async export is run to completion inside the component.

import { get as configGet } from 'geecache:plugin/config@0.1.0';
import { log } from 'geecache:plugin/log@0.1.0';

// Seconds the answer may be cached, from Cache-Control; undefined when it says nothing.
function maxAge(control) {
  if (!control) return undefined;
  let age;
  let shared;
  for (const part of control.toLowerCase().split(',')) {
    const d = part.trim();
    if (d === 'no-store' || d === 'no-cache' || d === 'private') return 0;
    const [name, value] = d.split('=');
    const n = Number.parseInt((value ?? '').replaceAll('"', ''), 10);
    if (name === 's-maxage' && Number.isFinite(n)) shared = n;
    if (name === 'max-age' && Number.isFinite(n)) age = n;
  }
  return shared ?? age;
}

export const getter = {
  info() {
    return { name: 'js_http_getter', version: '0.1.0' };
  },

  async get(group, key) {
    const base = configGet('base');
    if (!base) {
      throw { tag: 'unavailable', val: 'config key `base` is not set: --plugin-config js_http_getter.base=https://HOST/PATH' };
    }
    const url = `${base.replace(/\/+$/, '')}/${encodeURIComponent(key)}`;
    let response;
    try {
      response = await fetch(url);
    } catch (e) {
      throw { tag: 'unavailable', val: `${url}: ${e}` };
    }
    const status = response.status;
    if (status >= 200 && status < 300) {
      const value = new Uint8Array(await response.arrayBuffer());
      const age = maxAge(response.headers.get('cache-control'));
      const expiresAtMs = age === undefined ? undefined : BigInt(Date.now() + age * 1000);
      log('debug', `${group}/${key}: found, ${value.length} bytes`);
      return { tag: 'found', val: { value, expiresAtMs } };
    }
    if (status === 404 || status === 410) {
      log('debug', `${group}/${key}: not found`);
      return { tag: 'not-found' };
    }
    if (status === 429 || status >= 500) {
      throw { tag: 'unavailable', val: `${url}: the origin answered ${status}` };
    }
    throw { tag: 'other', val: `${url}: unexpected status ${status}` };
  },
};
