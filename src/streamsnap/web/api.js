// The server's HTTP API as the console calls it: JSON in and out, the API token asked for
// once when the server answers 401, and kept for this tab only (sessionStorage).

const TOKEN_KEY = "streamsnap.token";

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

let asking = null; // one token prompt at a time, whoever needs it

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra) {
  const h = new Headers(extra || {});
  const t = token();
  if (t) h.set("Authorization", "Bearer " + t);
  return h;
}

// The token, asked of the user in the login dialog. `wrong` says the last one was refused.
function askToken(wrong) {
  if (asking) return asking;
  const dialog = document.getElementById("login");
  const input = document.getElementById("token");
  document.getElementById("loginError").textContent = wrong ? "That token was refused." : "";
  input.value = "";
  asking = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        asking = null;
        const given = input.value.trim();
        if (given) sessionStorage.setItem(TOKEN_KEY, given);
        resolve(Boolean(given));
      },
      { once: true },
    );
  });
  dialog.showModal();
  input.focus();
  return asking;
}

// fetch() with the token; a 401 asks for it (again) and tries once more per answer given.
export async function request(path, options = {}) {
  for (;;) {
    const sent = token();
    const response = await fetch(path, { ...options, headers: headers(options.headers) });
    if (response.status !== 401) return response;
    if (token() !== sent) continue; // another request got a new token meanwhile
    const given = await askToken(Boolean(sent));
    if (!given) return response;
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
