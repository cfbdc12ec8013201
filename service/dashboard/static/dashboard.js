// The dashboard's own script: live learning curves (EventSource + uPlot), dropping files to
// predict, and the new job/study form posting JSON to the API. No build step.
"use strict";
const CSRF = {"X-Tricklab-CSRF": "1"};
const fmt = (x) => (x === null || x === undefined ? "" : Number(x).toPrecision(4));

function chart(el, label, names) {
  const width = Math.max(280, Math.min(560, el.parentElement.clientWidth || 560));
  const colours = ["#1f77b4", "#ff7f0e", "#2ca02c"];
  return new uPlot({
    width: width, height: 260, scales: {x: {time: false}},
    axes: [{label: "epoch"}, {label: label}],
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

function trickItem(box) {
  const item = {name: box.dataset.trick};
  for (const input of box.querySelectorAll("[data-param]")) {
    if (input.type === "checkbox") item[input.dataset.param] = input.checked;
    else if (input.value !== "") item[input.dataset.param] = input.type === "number" ? Number(input.value) : input.value;
  }
  return item;
}

function newForm(form) {
  const kind = () => form.querySelector("input[name=kind]:checked").value;
  const toggle = () => form.classList.toggle("study", kind() === "study");
  form.querySelectorAll("input[name=kind]").forEach((r) => r.addEventListener("change", toggle));
  toggle();
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    form.querySelectorAll("[data-error-for], #e-form").forEach((e) => { e.textContent = ""; });
    const spec = {};
    for (const f of ["epochs", "batch_size", "seed", "validation_size", "learning_rate"]) {
      const v = form.querySelector("#f-" + f).value;
      if (v !== "") spec[f] = Number(v);
    }
    const chosen = [...form.querySelectorAll(".trick")].filter((b) => b.querySelector("input[name=trick]").checked);
    const tricks = chosen.map(trickItem);
    let url = "/v1/jobs", body, prefix = "";
    if (kind() === "study") {
      // Its seeds are base.seed, base.seed + 1, … (repeats of them).
      body = {name: form.querySelector("#f-name").value, base: spec, tricks: tricks,
              design: form.querySelector("#f-design").value,
              repeats: Number(form.querySelector("#f-repeats").value)};
      url = "/v1/studies"; prefix = "base.";
    } else {
      body = Object.assign(spec, {tricks: tricks});
    }
    const answer = await fetch(url, {method: "POST", credentials: "same-origin",
      headers: Object.assign({"Content-Type": "application/json"}, CSRF), body: JSON.stringify(body)});
    const data = await answer.json().catch(() => ({}));
    if (answer.status === 201) {
      location.href = (kind() === "study" ? "/studies/" : "/jobs/") + data.id;
      return;
    }
    const issues = Array.isArray(data.detail) ? data.detail : [{field: "", msg: data.detail || answer.statusText}];
    for (const issue of issues) {
      let field = (issue.field || "").replace(/^body\.?/, "");
      if (prefix && field.startsWith(prefix)) field = field.slice(prefix.length);
      const m = field.match(/^tricks\[(\d+)\]\.(\w+)/);
      if (m && tricks[Number(m[1])]) field = tricks[Number(m[1])].name + "." + m[2];
      const target = form.querySelector('[data-error-for="' + field + '"]') || document.getElementById("e-form");
      target.textContent = (target.textContent ? target.textContent + " " : "") + issue.msg;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const box = document.getElementById("curves");
  if (box) curves(box);
  const predict = document.getElementById("predict");
  if (predict) dropFiles(predict);
  const form = document.getElementById("new-form");
  if (form) newForm(form);
});
