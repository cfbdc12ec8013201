// The dashboard's own script: live learning curves (EventSource + uPlot), dropping files to
// predict, and the new job/study form posting JSON to the API (only the fields changed). No
// build step.
"use strict";
// The session's CSRF token, as the page carries it for htmx.
const CSRF = JSON.parse(document.body.getAttribute("hx-headers") || "{}");
const fmt = (x) => (x === null || x === undefined ? "" : Number(x).toPrecision(4));

function chart(el, label, names) {
  // Two charts side by side, or one under the other on a narrow screen.
  const room = el.closest(".charts").clientWidth || 560;
  const width = Math.max(260, Math.min(560, room < 640 ? room - 8 : room / 2 - 16));
  const colours = ["#1f77b4", "#ff7f0e", "#2ca02c"];
  return new uPlot({
    width: width, height: 260, scales: {x: {time: false}},
    axes: [{label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500]}, {label: label}],
    series: [{label: "epoch"}].concat(names.map((n, i) => ({label: n, stroke: colours[i], width: 2, points: {show: true}}))),
  }, [[]].concat(names.map(() => [])), el);
}

function curves(box) {
  const loss = chart(document.getElementById("chart-loss"), "loss", ["train", "validation", "test"]);
  const acc = chart(document.getElementById("chart-accuracy"), "accuracy", ["train", "validation", "test"]);
  const data = {epoch: [], tl: [], vl: [], sl: [], ta: [], va: [], sa: []};
  const body = document.querySelector("#epoch-table tbody");
  const source = new EventSource("/v1/jobs/" + box.dataset.job + "/events");
  source.addEventListener("epoch", (event) => {
    const m = JSON.parse(event.data);
    if (data.epoch.includes(m.epoch)) return;
    data.epoch.push(m.epoch);
    data.tl.push(m.train_loss); data.vl.push(m.val_loss); data.sl.push(m.test_loss);
    data.ta.push(m.train_accuracy); data.va.push(m.val_accuracy); data.sa.push(m.test_accuracy);
    loss.setData([data.epoch, data.tl, data.vl, data.sl]);
    acc.setData([data.epoch, data.ta, data.va, data.sa]);
    box.dataset.points = String(data.epoch.length);
    const done = document.getElementById("epochs-done");
    if (done) done.textContent = String(m.epoch);
    const row = document.createElement("tr");
    for (const v of [m.epoch, fmt(m.train_loss), fmt(m.train_accuracy), fmt(m.val_loss), fmt(m.val_accuracy),
                     fmt(m.test_loss), fmt(m.test_accuracy), fmt(m.learning_rate), fmt(m.seconds)]) {
      const cell = document.createElement("td"); cell.textContent = String(v); row.appendChild(cell);
    }
    body.appendChild(row);
  });
  source.addEventListener("status", (event) => {
    const job = JSON.parse(event.data);
    const status = document.getElementById("job-status");
    if (status) { status.textContent = job.status; status.className = "status " + job.status; }
  });
  source.addEventListener("end", () => {
    source.close();
    box.dataset.complete = "true";
    // A job that ended while watched: show its result, buttons and the predict form.
    if (box.dataset.ended !== "true") location.reload();
  });
}

function dropFiles(form) {
  const input = form.querySelector("input[type=file]");
  const zone = form.querySelector(".drop");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    input.files = e.dataTransfer.files;
    htmx.trigger(form, "drop-files");
  });
}

// An input's value as the API takes it, or undefined to leave the API's default: an empty
// input, or a boolean left at "default". What does not parse as a number is sent as typed, so
// that the API's 422 names it.
function valueOf(input) {
  const v = input.value.trim();
  if (v === "") return undefined;
  if (input.dataset.kind === "boolean") return v === "true";
  const number = (x) => (x !== "" && Number.isFinite(Number(x)) ? Number(x) : x);
  if (input.dataset.kind === "number") return number(v);
  if (input.dataset.kind === "list") return v.split(/[\s,]+/).filter(Boolean).map(number);
  return v;
}

function collect(box, attribute, into) {
  for (const input of box.querySelectorAll("[data-" + attribute + "]")) {
    const v = valueOf(input);
    if (v !== undefined) into[input.dataset[attribute]] = v;
  }
  return into;
}

// "base.tricks[0].rate" → "dropout.rate", "hidden_units[1]" → "hidden_units": the
// data-error-for key of the input the API's message is about.
function errorKey(field, prefix, tricks) {
  field = field.replace(/^body\.?/, "");
  if (prefix && field.startsWith(prefix)) field = field.slice(prefix.length);
  const m = field.match(/^tricks\[(\d+)\](?:\.(\w+))?/);
  if (m && tricks[Number(m[1])]) return tricks[Number(m[1])].name + (m[2] ? "." + m[2] : "");
  return field.replace(/\[\d+\]$/, "");
}

// Show each trick parameter's default on the chosen architecture: what the API gives a
// parameter the form leaves empty.
function architectureDefaults(form) {
  const architecture = form.querySelector("[data-field=architecture]");
  const show = () => {
    for (const input of form.querySelectorAll("[data-defaults]")) {
      const value = JSON.parse(input.dataset.defaults)[architecture.value];
      if (input.tagName === "SELECT") input.options[0].textContent = "default (" + value + ")";
      else input.placeholder = value;
    }
  };
  architecture.addEventListener("change", show);
  show();
}

function newForm(form) {
  const kind = () => form.querySelector("input[name=kind]:checked").value;
  const toggle = () => form.classList.toggle("study", kind() === "study");
  form.querySelectorAll("input[name=kind]").forEach((r) => r.addEventListener("change", toggle));
  toggle();
  architectureDefaults(form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    form.querySelectorAll("[data-error-for], #e-form").forEach((e) => { e.textContent = ""; });
    const spec = collect(form, "field", {});
    const tricks = [...form.querySelectorAll(".trick")]
      .filter((box) => box.querySelector("input[name=trick]").checked)
      .map((box) => collect(box, "param", {name: box.dataset.trick}));
    const study = kind() === "study";
    const body = study
      ? {name: form.querySelector("#f-name").value, base: spec, tricks: tricks,
         design: form.querySelector("#f-design").value,
         repeats: valueOf(form.querySelector("#f-repeats"))}
      : Object.assign(spec, {tricks: tricks});
    const answer = await fetch(study ? "/v1/studies" : "/v1/jobs", {method: "POST", credentials: "same-origin",
      headers: Object.assign({"Content-Type": "application/json"}, CSRF), body: JSON.stringify(body)});
    const data = await answer.json().catch(() => ({}));
    if (answer.status === 201) {
      location.href = (study ? "/studies/" : "/jobs/") + data.id;
      return;
    }
    const issues = Array.isArray(data.detail) ? data.detail : [{field: "", msg: data.detail || answer.statusText}];
    for (const issue of issues) {
      const key = errorKey(issue.field || "", study ? "base." : "", tricks);
      const target = form.querySelector('[data-error-for="' + key + '"]') || document.getElementById("e-form");
      target.textContent = (target.textContent ? target.textContent + " " : "") + issue.msg;
    }
    const first = form.querySelector("[data-error-for]:not(:empty), #e-form:not(:empty)");
    if (first) first.scrollIntoView({block: "center"});
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("curves");
  if (box) curves(box);
  // Once cancelled, the page shows the job or search as it now is. Listened for on the body,
  // as htmx's events bubble there, because a live page swaps its button for a new one. (Not
  // hx-on: an attribute's script needs eval, which the Content-Security-Policy forbids.)
  document.body.addEventListener("htmx:afterRequest", (event) => {
    if (event.target.id === "cancel") location.reload();
  });
  const predict = document.getElementById("predict");
  if (predict) dropFiles(predict);
  const form = document.getElementById("new-form");
  if (form) newForm(form);
});
