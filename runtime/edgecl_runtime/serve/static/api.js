// Calls to the JSON API (docs/serve-api.md). Opening the page with ?token= sets the server's HttpOnly token
// cookie (the page's own requests carry it); the token is kept for this tab and sent as a header too. Every
// write echoes the server's _xsrf cookie in the X-XSRFToken header: a form on another site cannot.
const params = new URLSearchParams(location.search);
if (params.get("token")) {
  sessionStorage.setItem("edgecl.token", params.get("token"));
  params.delete("token");  // the token leaves the address bar (and screenshots, and shared links)
  history.replaceState(null, "", location.pathname + (params.size ? `?${params}` : ""));
}
export const token = sessionStorage.getItem("edgecl.token");

function xsrf() {
  const hit = document.cookie.split("; ").find((c) => c.startsWith("_xsrf="));
  return hit ? decodeURIComponent(hit.slice(6)) : "";
}

export function withToken(url) {
  return token ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}` : url;
}

export async function api(url, opts = {}) {
  const headers = { ...(opts.headers || {}), "X-XSRFToken": xsrf() };
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
