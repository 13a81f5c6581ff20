// Small DOM helpers shared by the views: building elements, messages, the two dialogs.

import { getKey, setKey } from "./api.js";

export const $ = (id) => document.getElementById(id);

/** el("td", {class: "x"}, "text", child, ...): text is always set as text, never as HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);   // CSSOM: allowed by the page's CSP, a style attribute is not
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

/** Show an error (an ApiError shows "status: the server's message"), or clear with null. */
export function showError(node, error) {
  node.textContent = error ? String(error) : "";
}

/** An error line that several sources write: `report(source, error)` shows an error; with null,
 * it clears the line only if that source wrote it (source null: whatever is shown). So a listing
 * that works again clears its own earlier failure, not the message of a refused upload. */
export function errorLine(node) {
  let from = null;
  return (source, error) => {
    if (error) {
      showError(node, error);
      from = source;
    } else if (source === null || from === source) {
      showError(node, null);
      from = null;
    }
  };
}

/** A name field filled from a file's name: `Reviews 2024.csv` -> `Reviews-2024`, a valid adapter name.
 * A name the user typed is kept; one filled from the previous file is replaced. */
export function nameFromFile(input, fileName) {
  const stem = fileName.replace(/\.[^.]+$/, "").replace(/[^A-Za-z0-9._-]+/g, "-").replace(/^[._-]+/, "")
    .slice(0, 64).replace(/[-_.]+$/, "");
  if (!input.value || input.value === input.dataset.filled) {
    input.value = stem;
    input.dataset.filled = stem;
  }
}

/** A message when `size` bytes are over the server's `limit` (the setting named), else null:
 * said before a byte is sent, not after the whole file went up to meet a 413. */
export function overLimit(what, size, limit, setting) {
  if (!limit || size <= limit) return null;
  return `${what} is ${bytes(size)}, over the server's limit of ${bytes(limit)} (${setting}).`;
}

/** A progress line (a <p> holding a <progress> and a <span>) for a body going out: shown with
 * "Uploading 12.0 of 64.0 MiB (19%)" while it does, hidden by uploadProgress(node, null). Returns
 * the (sent, total) callback that api()'s onProgress takes. */
export function uploadProgress(node, what) {
  if (what === null) {
    node.hidden = true;
    return null;
  }
  const bar = node.querySelector("progress"), label = node.querySelector("span");
  const show = (sent, total) => {
    if (sent === null) {                         // waiting for a key: the upload starts again after
      node.hidden = false;
      bar.removeAttribute("value");
      label.textContent = `${what}: waiting for the key...`;
      return;
    }
    node.hidden = false;
    bar.max = total;
    bar.value = sent;
    label.textContent = sent < total ? `Uploading ${what}: ${bytes(sent)} of ${bytes(total)} (${Math.floor(100 * sent / total)}%)`
                                     : `Uploaded ${what} (${bytes(total)}); the server is checking it...`;
  };
  show(0, 1);
  label.textContent = `Uploading ${what}...`;
  return show;
}

export function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

/** Ask yes/no in the page's own dialog; resolves true on yes. */
export function confirmDialog(question, yesLabel = "Delete") {
  const dialog = $("confirm-dialog");
  $("confirm-text").textContent = question;
  $("confirm-yes").textContent = yesLabel;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

/** The key dialog; `kind` ("api" or "admin") is focused, `message` says why it is asked.
 * Resolves true when a key was saved. */
export function keyDialog(kind = null, message = "") {
  const dialog = $("key-dialog");
  $("key-message").textContent = message;
  $("key-api").value = getKey("api");
  $("key-admin").value = getKey("admin");
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      if (dialog.returnValue === "save") {
        setKey("api", $("key-api").value.trim());
        setKey("admin", $("key-admin").value.trim());
        // the admin key works wherever the API key does: either answers an API key prompt
        resolve(Boolean(kind === "admin" ? getKey("admin") : getKey("api") || getKey("admin")));
      } else {
        if (dialog.returnValue === "forget") { setKey("api", ""); setKey("admin", ""); }
        resolve(false);
      }
    }, { once: true });
    dialog.returnValue = "";
    dialog.showModal();
    $(kind === "api" ? "key-api" : "key-admin").focus();
  });
}

/** Tabs as the ARIA pattern has them: buttons with aria-selected, arrows/Home/End move, one tab stop. */
export function tabs(onShow) {
  const list = [...document.querySelectorAll('[role="tab"]')];
  function select(tab, focus) {
    for (const t of list) {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    if (focus) tab.focus();
    const name = tab.id.replace("tab-", "");
    history.replaceState(null, "", `#${name}`);
    onShow(name);
  }
  list.forEach((tab, i) => {
    tab.addEventListener("click", () => select(tab, false));
    tab.addEventListener("keydown", (e) => {
      const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: list.length - 1 }[e.key];
      if (next === undefined) return;
      e.preventDefault();
      select(list[(next + list.length) % list.length], true);
    });
  });
  const show = (name) => select($(`tab-${name}`) || list[0], false);
  show(location.hash.slice(1));
  return show;
}
