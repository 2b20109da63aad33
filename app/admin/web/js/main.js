// The app shell: asks admin/init whether a sign-in is needed, then routes by location.hash.
// Each page module exports mount(view) returning an unmount function (stops its timers and
// sockets), so leaving a page never leaves work running behind it.

import * as api from "./api.js";
import * as signin from "./signin.js";
import * as status from "./status.js";
import * as actions from "./actions.js";
import * as channels from "./channels.js";
import * as tail from "./tail.js";
import { h, replace } from "./dom.js";

const PAGES = { status, actions, channels, tail };
const DEFAULT_PAGE = "status";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const signout = document.getElementById("signout");

let unmount = null;
let insecure = false;

function show(page, arg) {
  unmount?.();
  unmount = null;
  view.replaceChildren();
  unmount = page.mount(view, arg) ?? null;
  // Move focus to the new page (for screen readers) unless the page focused a field itself.
  if (!view.contains(document.activeElement)) view.focus({ preventScroll: true });
}

/** "#/channels/chat%3Aroom" → ["channels", "chat:room"]. */
function parseHash() {
  const [name, ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  return [name, rest.length ? decodeURIComponent(rest.join("/")) : ""];
}

function route() {
  const [name, arg] = parseHash();
  if (!PAGES[name]) {
    location.replace(`#/${DEFAULT_PAGE}`);
    return;
  }
  for (const link of nav.querySelectorAll("a")) {
    if (link.getAttribute("href") === `#/${name}`) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  show(PAGES[name], arg);
}

function signedIn() {
  nav.hidden = false;
  signout.hidden = insecure;
  window.addEventListener("hashchange", route);
  route();
}

function needSignIn() {
  window.removeEventListener("hashchange", route);
  nav.hidden = true;
  signout.hidden = true;
  show(signin, { onSignedIn: signedIn });
}

signout.addEventListener("click", () => {
  api.clearToken();
  needSignIn();
});
window.addEventListener("admin:unauthorized", needSignIn);

async function boot() {
  try {
    const info = await api.init();
    insecure = Boolean(info.insecure);
    if (insecure || info.authenticated) signedIn();
    else needSignIn();
  } catch (e) {
    if (e instanceof api.Unauthorized) return;
    replace(view, h("p", { class: "error", role: "alert" }, `Cannot reach the server: ${e.message}`));
  }
}

boot();
