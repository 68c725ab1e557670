// Calls to the JSON API (docs/serve-api.md), with the server's token when the page was opened with ?token=.
const params = new URLSearchParams(location.search);
if (params.get("token")) sessionStorage.setItem("edgecl.token", params.get("token"));
export const token = sessionStorage.getItem("edgecl.token");

export function withToken(url) {
  return token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
}

export async function api(url, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(url, { ...opts, headers });
  const type = r.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error(body?.error || `${r.status} ${r.statusText}`);
  return body;
}

/** Bytes at `url`, or null when the server answers 404. */
export async function fetchBytes(url) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const r = await fetch(url, { headers, cache: "no-store" });
  if (r.status === 404) return null;
  if (!r.ok) throw new Error(`${url}: ${r.status} ${r.statusText}`);
  return new Uint8Array(await r.arrayBuffer());
}
