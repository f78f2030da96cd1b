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

// The wizard's advanced fields show the chosen base model's defaults as placeholders (no inline script:
// the pages' Content-Security-Policy runs only this file and htmx).
document.addEventListener("DOMContentLoaded", function () {
  var chooser = document.getElementById("base_model"), defaults = document.getElementById("model-defaults");
  if (!chooser || !defaults) return;
  chooser.addEventListener("change", function (e) {
    var all = JSON.parse(defaults.textContent)[e.target.value] || {};
    Object.keys(all).forEach(function (k) { var box = document.getElementById("adv-" + k); if (box) box.placeholder = all[k]; });
  });
});
