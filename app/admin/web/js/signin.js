// Sign-in page: POST admin/auth with the password; on success main.js shows the app.

import * as api from "./api.js";
import { h, field } from "./dom.js";

export function mount(view, { onSignedIn }) {
  const password = h("input", {
    id: "password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  // Centrifugo's admin has one account; the hidden user name lets password managers file it.
  const username = h("input", {
    type: "text",
    name: "username",
    autocomplete: "username",
    value: "admin",
    hidden: true,
  });
  const error = h("p", { id: "signin-error", class: "error", role: "alert", hidden: true });
  const submit = h("button", { id: "signin-submit", type: "submit" }, "Sign in");

  const form = h(
    "form",
    { id: "signin-form", class: "card narrow", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in"),
    username,
    field("Admin password", password),
    error,
    submit,
  );

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.hidden = true;
    try {
      await api.signIn(password.value);
      onSignedIn();
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
      password.select();
    } finally {
      submit.disabled = false;
    }
  });

  view.append(form);
  password.focus();
  return null;
}
