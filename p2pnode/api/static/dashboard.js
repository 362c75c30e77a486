// The dashboard's session secret lives in this origin's localStorage and travels only as a header
// that this script adds to htmx's requests and its own fetches. Never a cookie: a browser sends a
// host's cookies to every port of it, and any local account can serve a port on 127.0.0.1.
"use strict";

const SESSION = "p2pnode-session";
const LOGIN = "/login";
const NO_STORAGE =
  "This browser keeps no site data for this page (cookies and site data are blocked), so the " +
  "dashboard cannot keep its session: allow site data for this address, then log in.";

// Where privacy settings block site data, reading localStorage throws (Chromium) or gives null.
const storage = (() => {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
})();

function sessionHeaders() {
  const secret = storage?.getItem(SESSION);
  return secret ? { "X-P2pnode-Session": secret } : {};
}

function toLogin() {
  storage?.removeItem(SESSION);
  location.replace(LOGIN);
}

// The one line an error answer of the node carries.
function detailOf(body, status) {
  try {
    return JSON.parse(body).detail;
  } catch {
    return `HTTP ${status}`;
  }
}

// A shell without a session would only load refusals.
if (location.pathname !== LOGIN && !storage?.getItem(SESSION)) toLogin();

document.addEventListener("htmx:configRequest", (event) => {
  if (new URL(event.detail.path, location.href).origin === location.origin) {
    Object.assign(event.detail.headers, sessionHeaders());
  }
});

document.addEventListener("htmx:responseError", (event) => {
  const { xhr, target } = event.detail;
  if (xhr.status === 401) {
    toLogin();
  } else if (target && target.childElementCount === 0) {
    // A fragment that never loaded (an unknown job, say) says why instead of staying blank.
    target.textContent = `error: ${detailOf(xhr.responseText, xhr.status)}`;
  }
});

// A download link cannot send the header, and fetching the bytes with it would hold a whole output
// in this page's memory: trade the session for a one-time link to the blob (good for a minute) and
// let the browser follow it, saving the bytes to disk as they stream.
async function download(link) {
  const minted = await fetch(`/ui${link.getAttribute("href")}/download`, {
    method: "POST",
    headers: sessionHeaders(),
  });
  if (minted.status === 401) return toLogin();
  if (!minted.ok) {
    link.textContent = `error: ${detailOf(await minted.text(), minted.status)}`;
    return;
  }
  const save = document.createElement("a");
  save.href = (await minted.json()).url;
  save.download = link.getAttribute("download");
  document.body.append(save);
  save.click();
  save.remove();
}

async function logout() {
  try {
    await fetch("/ui/logout", { method: "POST", headers: sessionHeaders() });
  } finally {
    toLogin();
  }
}

function showLoginError(text) {
  const error = document.getElementById("login-error");
  error.textContent = text;
  error.hidden = false;
}

async function logIn(credential) {
  if (!storage) return showLoginError(NO_STORAGE);
  let response;
  try {
    response = await fetch(LOGIN, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(credential),
    });
  } catch {
    return showLoginError("The node does not answer.");
  }
  if (!response.ok) return showLoginError(detailOf(await response.text(), response.status));
  storage.setItem(SESSION, (await response.json()).session);
  location.replace("/");
}

document.addEventListener("click", (event) => {
  const copy = event.target.closest("[data-copy]");
  if (copy) {
    // Copy buttons: <button data-copy="ID"> copies the text of the element with that id.
    const text = document.getElementById(copy.dataset.copy).textContent.trim();
    navigator.clipboard.writeText(text).then(
      () => { copy.textContent = "Copied"; },
      () => { copy.textContent = "Select and copy by hand"; },
    );
  }
  const link = event.target.closest("a[data-download]");
  if (link) {
    event.preventDefault();
    download(link);
  }
  if (event.target.closest("[data-logout]")) logout();
});

document.addEventListener("DOMContentLoaded", () => {
  const form = document.querySelector("form.login");
  if (!form) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    logIn({ token: form.elements.token.value.trim() });
  });
  // Said before anything is pasted; a link's code is then left unspent.
  if (!storage) return showLoginError(NO_STORAGE);
  // A `p2pnode dashboard` link: its code rides in the fragment, which no request carries.
  const code = new URLSearchParams(location.hash.slice(1)).get("code");
  if (code) {
    history.replaceState(null, "", LOGIN);
    logIn({ code });
  }
});
