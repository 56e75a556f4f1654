// What every example page shares: who the visitor is and a colour for them.
// Our own code, no dependencies.

/**
 * The visitor's credential: a JWT given in the page URL's hash
 * (`#token=...`, never sent to any server by the browser) and kept for this
 * tab's session, so a reload keeps it. `null` on an open server, where no
 * credential is needed.
 */
export function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
  if (fromHash) {
    sessionStorage.setItem('herald-examples-token', fromHash);
    history.replaceState(null, '', location.pathname + location.search);
    return fromHash;
  }
  return sessionStorage.getItem('herald-examples-token');
}

/** The claims of a JWT (for display only: the server verifies it), or `null`. */
export function claims(jwt) {
  try {
    const part = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part));
  } catch {
    return null;
  }
}

/**
 * A display name: `?name=` in the page URL, else the token's `info.name` or
 * `sub`, else a random `guest-1234` kept in localStorage (the same across
 * reloads and tabs of this browser).
 */
export function userName() {
  const fromQuery = new URLSearchParams(location.search).get('name');
  if (fromQuery) return fromQuery.slice(0, 40);
  const t = token();
  const c = t && claims(t);
  if (c?.info?.name) return String(c.info.name).slice(0, 40);
  if (c?.sub) return String(c.sub).slice(0, 40);
  let name = localStorage.getItem('herald-examples-name');
  if (!name) {
    name = `guest-${Math.floor(1000 + Math.random() * 9000)}`;
    localStorage.setItem('herald-examples-name', name);
  }
  return name;
}

/** A stable colour for a string (a name, a client id): `hsl(h 70% 45%)`. */
export function colorOf(s) {
  let h = 0;
  for (const ch of String(s)) h = (h * 31 + ch.codePointAt(0)) >>> 0;
  return `hsl(${h % 360} 70% 45%)`;
}

/** A query parameter of the page URL, or `fallback`. */
export function param(name, fallback) {
  return new URLSearchParams(location.search).get(name) || fallback;
}

/**
 * Shows why the page cannot do what it should (a HeraldError from the
 * client's onError, or a publish refused), in a banner under the page's
 * header, with what to do about a missing or too narrow credential.
 */
export function showProblem(err) {
  let el = document.getElementById('problem');
  if (!el) {
    el = document.createElement('p');
    el.id = 'problem';
    el.className = 'problem error';
    el.setAttribute('role', 'alert');
    const header = document.querySelector('header');
    if (header) header.after(el);
    else document.body.prepend(el);
  }
  const hints = {
    unauthorized:
      ' This server asks for a credential: open the page with #token=<a JWT> (the README\'s "Examples gallery" gives the one command that mints a token for every page).',
    forbidden:
      ' The token does not grant this: the README\'s "Examples gallery" lists the grants the pages need.',
  };
  el.textContent = `${err?.message ?? String(err)}${hints[err?.code] ?? ''}`;
}
