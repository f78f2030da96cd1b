// loraflow web UI: what htmx does with a refusal. A 422 answer is a page fragment that names the problem,
// so it is swapped in like a success; any other error, or no answer at all, shows in the banner at the top
// instead of being dropped silently.
htmx.config.responseHandling = [
  {code: "204", swap: false},
  {code: "[23]..", swap: true},
  {code: "422", swap: true, error: false},
  {code: "[45]..", swap: false, error: true},
];

function loraflowFlash(text) {
  var box = document.getElementById("flash");
  if (!box) return;
  box.textContent = text;
  box.hidden = false;
}

document.addEventListener("htmx:responseError", function (e) {
  var xhr = e.detail.xhr, text = xhr.status + " " + xhr.statusText;
  try {
    var problem = JSON.parse(xhr.responseText);
    var title = problem.title ? problem.title.charAt(0).toUpperCase() + problem.title.slice(1) : text;
    text = title + (problem.detail ? ": " + problem.detail : "");
  } catch (err) { /* not a problem document: keep the status line */ }
  loraflowFlash(text);
});

document.addEventListener("htmx:sendError", function () {
  loraflowFlash("The server did not answer. Is `loraflow serve` still running?");
});

// The new-job form: choosing a base model shows that model's defaults (greyed placeholders) and the engines
// that train it. The data comes from JSON blocks in the page, so this file holds no model knowledge.
function loraflowJson(id) {
  var node = document.getElementById(id);
  return node ? JSON.parse(node.textContent) : {};
}

function loraflowModelChosen(model) {
  var advanced = loraflowJson("model-defaults")[model] || {};
  Object.keys(advanced).forEach(function (k) {
    var box = document.getElementById("adv-" + k);
    if (box) box.placeholder = advanced[k];
  });
  var net = loraflowJson("network-defaults")[model] || {};
  [["network.rank", net.rank], ["network.alpha", net.alpha], ["sample_prompts", net.prompts]].forEach(function (p) {
    var box = document.getElementById(p[0]);
    if (box && p[1] !== undefined) box.placeholder = p[1];
  });
  var select = document.getElementById("engine");
  if (!select) return;
  var keep = select.value;
  while (select.options.length > 1) select.remove(1);
  (loraflowJson("model-engines")[model] || []).forEach(function (e) {
    var label = e.name + (e["default"] ? " (default)" : "") + (e.here ? "" : " — not installed on this server: rented hosts only");
    var option = new Option(label, e.name);
    option.selected = e.name === keep;
    select.add(option);
  });
}

document.addEventListener("change", function (e) {
  if (e.target && e.target.id === "base_model") loraflowModelChosen(e.target.value);
});

document.addEventListener("DOMContentLoaded", function () {
  var refusal = document.getElementById("start-error");  // a refused Start: shown where the user looks
  if (refusal) { refusal.scrollIntoView({block: "start"}); refusal.focus(); }
});

// The upload page's drop zone: files dropped on it become the file input's files and are uploaded at once,
// as in FluxGym and ai-toolkit's UI.
document.addEventListener("DOMContentLoaded", function () {
  var zone = document.getElementById("dropzone"), input = document.getElementById("files");
  if (!zone || !input) return;
  ["dragenter", "dragover"].forEach(function (name) {
    zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.add("over"); });
  });
  zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
  zone.addEventListener("drop", function (e) {
    e.preventDefault();
    zone.classList.remove("over");
    if (!e.dataTransfer || !e.dataTransfer.files.length) return;
    input.files = e.dataTransfer.files;
    document.getElementById("dropped").textContent = e.dataTransfer.files.length + " file(s): uploading…";
    input.form.requestSubmit();
  });
});
