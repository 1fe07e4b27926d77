// The server's HTTP API as the console calls it: JSON in and out, the API token (or a user's
// name and password) asked for once when the server answers 401, and kept for this tab only
// (sessionStorage).

const AUTH_KEY = "streamsnap.authorization"; // the Authorization header's value

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

let asking = null; // one prompt at a time, whoever needs it
let refused = false; // the last credentials given were wrong
let dismissed = false; // the user closed the prompt: ask again only when told (signIn)

export function token() {
  return sessionStorage.getItem(AUTH_KEY) || "";
}

export function forgetToken() {
  sessionStorage.removeItem(AUTH_KEY);
}

function headers(extra) {
  const h = new Headers(extra || {});
  // this page asks for credentials itself: no Basic challenge (the browser's own login box)
  h.set("X-Requested-With", "XMLHttpRequest");
  const t = token();
  if (t) h.set("Authorization", t);
  return h;
}

// Credentials, asked of the user in the login dialog: the token, or a user's name and
// password ([auth] users). Resolves to whether some were given.
function ask() {
  if (asking) return asking;
  const dialog = document.getElementById("login");
  const fields = ["token", "user", "password"].map((id) => document.getElementById(id));
  document.getElementById("loginError").textContent = refused ? "Those credentials were refused." : "";
  for (const f of fields) f.value = "";
  asking = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        asking = null;
        const [tokenField, user, password] = fields.map((f) => f.value.trim());
        // Esc or Cancel leaves returnValue empty: what was typed is not kept
        let given = "";
        if (dialog.returnValue === "ok" && user) {
          const pair = new TextEncoder().encode(user + ":" + password);
          given = "Basic " + btoa(String.fromCharCode(...pair));
        } else if (dialog.returnValue === "ok" && tokenField) {
          given = "Bearer " + tokenField;
        }
        if (given) sessionStorage.setItem(AUTH_KEY, given);
        dismissed = !given;
        document.dispatchEvent(new CustomEvent("streamsnap-auth", { detail: { dismissed } }));
        resolve(Boolean(given));
      },
      { once: true },
    );
  });
  dialog.returnValue = "";
  dialog.showModal();
  fields[0].focus();
  return asking;
}

// The prompt again, after the user closed it.
export function signIn() {
  dismissed = false;
  return ask();
}

let trial = null; // the one request trying credentials just given: the others wait for it

// fetch() with the credentials; a 401 asks for them (again). Wrong credentials are dropped
// at the first 401 that carried them, and new ones are tried by one request before the others
// send them: each request sent with wrong ones counts as a failed login, and the server
// throttles an address after ten a minute.
export async function request(path, options = {}) {
  const send = () => fetch(path, { ...options, headers: headers(options.headers) });
  for (;;) {
    if (trial) await trial;
    const sent = token();
    if (!sent && dismissed) return send(); // no prompt: the page shows the 401
    const response = await send();
    if (response.status !== 401) {
      if (sent) refused = false;
      return response;
    }
    if (sent && token() === sent) {
      forgetToken();
      refused = true;
    } else if (token() && token() !== sent) {
      continue; // credentials given meanwhile
    }
    if (dismissed) return response;
    if (asking) {
      await asking; // another request's prompt: go again once it is answered
      continue;
    }
    if (!(await ask())) return response;
    let settle;
    trial = new Promise((resolve) => (settle = resolve));
    try {
      const tried = await send();
      if (tried.status !== 401) {
        refused = false;
        return tried;
      }
      forgetToken();
      refused = true;
    } finally {
      trial = null;
      settle();
    }
  }
}

// The message of an error answer: the server's own words (WCS body `message`) where it gave any.
export async function errorOf(response) {
  let body = null;
  let message = response.status + " " + response.statusText;
  try {
    body = await response.json();
    if (body && body.message) message = response.status + ": " + body.message;
  } catch {
    // not JSON: the status line says it
  }
  return new ApiError(response.status, message, body);
}

// POST a JSON body to a REST method; the parsed answer, or ApiError.
export async function post(path, body) {
  const response = await request(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body || {}),
  });
  if (!response.ok) throw await errorOf(response);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// An image answer as a Blob with the headers that came with it, or ApiError.
export async function image(path) {
  const response = await request(path);
  if (!response.ok) throw await errorOf(response);
  return { blob: await response.blob(), headers: response.headers };
}

export function streamPath(name, file, query) {
  const q = query ? "?" + new URLSearchParams(query) : "";
  return "/streams/" + encodeURIComponent(name) + "/" + file + q;
}
