// Adapters: the list (GET /v1/adapters), upload by file picker or drag and drop
// (PUT /v1/adapters/{name}, the file as the body), delete after a confirmation.

import { api, serverSettings } from "./api.js";
import { $, bytes, confirmDialog, el, errorLine, nameFromFile, overLimit, uploadProgress } from "./ui.js";

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
let chosen = null;                       // the File to upload
let names = new Set();                   // the names listed last: an upload under one replaces it

const report = errorLine($("adapters-error"));   // sources: "list", "action"

function message(error, note) {
  report("action", error);
  if (!error) report(null, null);
  $("adapters-note").textContent = note || "";
}

export async function load() {
  let adapters;
  try {
    ({ adapters } = await api("v1/adapters"));
  } catch (e) {
    return report("list", e);
  }
  report("list", null);                    // an earlier failure to list is over, not an upload's
  names = new Set(adapters.map((a) => a.name));
  const rows = adapters.map((a) => el("tr", { "data-name": a.name },
    el("th", { scope: "row" }, el("span", { class: "long" }, a.name)),
    el("td", {}, el("span", { class: "long" }, a.labels.join(", "))),
    el("td", { class: "num" }, a.layer),
    el("td", { class: "num" }, a.prompt_length),
    el("td", { class: "num" }, bytes(a.size_bytes)),
    el("td", {}, el("code", { title: a.version }, a.version.slice(0, 12))),
    el("td", {}, a.resident ? "yes" : "no"),
    el("td", {}, el("button", { type: "button", class: "danger", "aria-label": `Delete ${a.name}`,
                                onclick: () => remove(a.name) }, "Delete"))));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "hint" }, "No adapters in the store.")));
  $("adapters-table").tBodies[0].replaceChildren(...rows);
}

async function remove(name) {
  if (!(await confirmDialog(`Delete the adapter "${name}"? Requests for it will answer 404.`))) return;
  try {
    await api(`v1/adapters/${encodeURIComponent(name)}`, { method: "DELETE", admin: true });
    message(null, `Deleted ${name}.`);
  } catch (e) {
    message(e);
  }
  await load();
  $("adapters-refresh").focus();          // the row and its button are gone: not back to the page's top
}

function choose(file) {
  chosen = file;
  if (!file) return;
  nameFromFile($("upload-name"), file.name);
  $("drop-zone").dataset.file = file.name;
  message(null, `${file.name} (${bytes(file.size)}) chosen.`);
}

async function upload(event) {
  event.preventDefault();
  const name = $("upload-name").value.trim();
  if (!chosen) return message("Choose an adapter file first.");
  if (!NAME.test(name)) return message("Give the adapter a name: letters, digits, '.', '_' or '-', up to 64 characters.");
  const limits = await serverSettings();
  const tooBig = overLimit(chosen.name, chosen.size, limits?.max_adapter_bytes, "LPT_MAX_ADAPTER_BYTES");
  if (tooBig) return message(tooBig);
  if (names.has(name) && !(await confirmDialog(`Replace the adapter "${name}" with ${chosen.name}? Requests for it `
                                               + "will be answered by the new version.", "Replace"))) return;
  $("upload-submit").disabled = true;
  try {
    // no status here (api() returns the body): the list below shows the new version
    const info = await api(`v1/adapters/${encodeURIComponent(name)}`, {
      method: "PUT", body: chosen, admin: true, headers: { "Content-Type": "application/octet-stream" },
      onProgress: uploadProgress($("upload-progress"), chosen.name) });
    message(null, `Uploaded ${info.name} (labels: ${info.labels.join(", ")}; version ${info.version.slice(0, 12)}).`);
    $("upload-form").reset();
    chosen = null;
    delete $("drop-zone").dataset.file;
  } catch (e) {
    message(e);
  } finally {
    uploadProgress($("upload-progress"), null);
    $("upload-submit").disabled = false;
  }
  await load();
}

export function init() {
  $("upload-form").addEventListener("submit", upload);
  $("upload-file").addEventListener("change", (e) => choose(e.target.files[0]));
  $("adapters-refresh").addEventListener("click", load);
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    choose(e.dataTransfer.files[0]);
  });
  // a file dropped anywhere else on the Adapters view is chosen too; elsewhere on the page the
  // browser would open it and leave the console. Text drops, and drops on a field (the Train
  // view's file inputs, a text box), are left to the browser.
  const taken = (e) => e.defaultPrevented || !e.dataTransfer || ![...e.dataTransfer.types].includes("Files")
    || e.target.closest?.("input, textarea");
  window.addEventListener("dragover", (e) => { if (!taken(e)) e.preventDefault(); });
  window.addEventListener("drop", (e) => {
    if (taken(e)) return;
    e.preventDefault();
    if (!$("view-adapters").hidden) choose(e.dataTransfer.files[0]);
  });
}
