// The console's entry point: the tabs, the key dialog, and which view loads what when shown.

import { onKeyNeeded } from "./api.js";
import * as adapters from "./adapters.js";
import * as status from "./status.js";
import * as train from "./train.js";
import * as tryView from "./try.js";
import { $, keyDialog, tabs } from "./ui.js";

onKeyNeeded((kind, message) => keyDialog(kind, message));

tryView.init();
adapters.init();

let current = null;

function onShow(view) {
  current = view;
  status.live(view === "status");
  if (view === "try") tryView.loadTasks();
  else if (view === "adapters") adapters.load();
  else if (view === "train") train.loadJobs();
}

const show = tabs(onShow);

// keys saved (or forgotten) from the Keys button: load the open view again with them, so that
// what a missing or wrong key refused is shown without switching tabs
$("keys-button").addEventListener("click", async () => {
  await keyDialog();
  onShow(current);
});

train.init(async (task) => {
  show("try");
  await tryView.loadTasks(task);
  $("try-text").focus();
});
