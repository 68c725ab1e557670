// The page of `edgecl serve`: predict from the camera or files, teach classes, remove, roll back, download.
// Two engines run the model: "server" (the JSON API, docs/serve-api.md) and "browser" (onnxruntime-web, browser.js).
// Each engine's predict gives {top_k: [{class, score}], unknown, unknown_score, threshold}: an image scoring above the
// bundle's calibrated unknown threshold is "unknown", and the page offers to teach it.
import { api, withToken } from "./api.js";

const $ = (id) => document.getElementById(id);
const state = { info: null, classes: [], history: null, pending: [], engine: null, stream: null, busy: false, shown: null };

function show(msg, kind = "error") {
  const el = $("message");
  el.textContent = msg;
  el.className = kind === "info" ? "info" : "";
  el.hidden = !msg;
}

function setStatus(text, st = "ready") {
  $("status").textContent = text;
  $("status").dataset.state = st;
}

// ------------------------------------------------------------------ engines
const serverEngine = {
  name: "server",
  async predict(item) {
    const form = new FormData();
    form.append("image", item.blob, item.filename || "image.png");
    const r = await api(`/api/predict?top_k=${state.info.default_top_k}`, { method: "POST", body: form });
    const p = r.predictions[0];
    return { top_k: p.top_k, unknown: p.unknown, unknown_score: p.unknown_score, threshold: r.unknown_threshold };
  },
  async teach(name, create, items) {
    const form = new FormData();
    if (create) form.append("name", name);
    for (const it of items) form.append("image", it.blob, it.filename || "example.png");
    const url = create ? "/api/classes" : `/api/classes/${encodeURIComponent(name)}/examples`;
    return api(url, { method: "POST", body: form });
  },
  async refresh() {},
};

async function engineFor(mode) {
  if (mode !== "browser") return serverEngine;
  if (!state.info.browser_mode) throw new Error(state.info.browser_mode_unavailable);
  const { BrowserEngine } = await import("./browser.js");
  setStatus("Loading the model into the browser…", "loading");
  return BrowserEngine.create(state.info);
}

// ------------------------------------------------------------------ images
function fromFile(file) {
  return { blob: file, filename: file.name, url: URL.createObjectURL(file) };
}

async function fromCamera() {
  const v = $("video");
  const canvas = document.createElement("canvas");
  canvas.width = v.videoWidth;
  canvas.height = v.videoHeight;
  canvas.getContext("2d").drawImage(v, 0, 0);  // 1:1 copy of the frame, no scaling
  const blob = await new Promise((res) => canvas.toBlob(res, "image/png"));
  return { blob, filename: "camera.png", url: URL.createObjectURL(blob) };
}

// ------------------------------------------------------------------ predictions
function renderBars(topk) {
  const ol = $("prediction");
  ol.replaceChildren();
  for (const { class: name, score } of topk) {
    const li = document.createElement("li");
    li.className = "pred-row";
    li.dataset.class = name;
    li.dataset.score = score.toFixed(6);
    const pct = Math.max(0, Math.min(1, score)) * 100;
    li.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span><span class="value"></span>';
    li.querySelector(".name").textContent = name;
    li.querySelector(".name").title = name;
    li.querySelector(".fill").style.width = `${pct.toFixed(1)}%`;
    li.querySelector(".value").textContent = score.toFixed(2);
    ol.append(li);
  }
}

/** The unknown score under the bars, and for a rejected image the "Unknown — teach it?" box with the nearest class.
 * #top1 keeps the nearest class in data-class and says data-unknown="true" when the image was rejected. */
function renderUnknown(result) {
  const top1 = $("top1");
  top1.textContent = result.unknown ? "→ unknown" : `→ ${result.top_k[0].class}`;
  top1.dataset.class = result.top_k[0].class;
  top1.dataset.unknown = String(Boolean(result.unknown));
  top1.classList.toggle("rejected", Boolean(result.unknown));
  $("unknown").hidden = !result.unknown;
  $("unknown-nearest").textContent = result.top_k[0].class;
  const u = result.unknown_score, t = result.threshold;
  $("unknown-score").dataset.score = u == null ? "" : u.toFixed(6);
  $("unknown-score").textContent = u == null ? "" : `unknown score ${u.toFixed(3)}` +
    (t == null ? " (this bundle has no calibrated threshold: nothing is rejected)" : ` (unknown above ${t.toFixed(3)})`);
}

function renderPrediction(result) {
  renderBars(result.top_k);
  if (!result.top_k.length) {
    $("prediction").innerHTML = '<li class="muted">The bundle has no classes: teach one.</li>';
    $("top1").textContent = "";
    $("unknown").hidden = true;
    $("unknown-score").textContent = "";
    return;
  }
  renderUnknown(result);
}

/** The engine's prediction of an image, timed: the page shows how long a prediction took, and where it ran. */
async function timedPredict(item) {
  const t0 = performance.now();
  const result = await state.engine.predict(item);
  const ms = performance.now() - t0;
  $("latency").textContent = `${ms.toFixed(0)} ms ${state.engine.name === "browser" ? "in this browser" : "on the server"}`;
  $("latency").dataset.ms = ms.toFixed(2);
  state.shown = item;  // the image the prediction is of: "Teach it" takes it
  return result;
}

async function predictItem(item) {
  $("preview").src = item.url;
  $("preview").hidden = false;
  try {
    renderPrediction(await timedPredict(item));
    $("prediction").dataset.done = String(Number($("prediction").dataset.done || 0) + 1);
    show("");
  } catch (e) {
    show(`Prediction failed: ${e.message}`);
  }
}

/** "Teach it": the shown image joins the pending examples of the Teach panel, whose name field gets the focus. */
function teachShown() {
  if (!state.shown) return;
  if (!state.pending.includes(state.shown)) addPending([state.shown]);
  $("teach-card").scrollIntoView({ behavior: "smooth", block: "nearest" });
  $("class-name").focus();
  show("The image is in the Teach panel: type its class name and press Teach.", "info");
}

async function liveLoop() {
  while (state.stream) {
    if ($("live").checked && !state.busy && $("video").videoWidth) {
      state.busy = true;
      try {
        renderPrediction(await timedPredict(await fromCamera()));
        $("prediction").dataset.live = String(Number($("prediction").dataset.live || 0) + 1);
      } catch (e) {
        show(`Prediction failed: ${e.message}`);
      } finally {
        state.busy = false;
      }
    }
    await new Promise((r) => setTimeout(r, 400));
  }
}

async function toggleCamera() {
  if (state.stream) {
    state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    $("video").hidden = true;
    $("camera-btn").textContent = "Start camera";
    $("capture-btn").disabled = $("burst-btn").disabled = true;
    return;
  }
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: { ideal: "environment" } }, audio: false });  // the rear camera on a phone
  } catch (e) {
    show(`Cannot open the camera: ${e.message}`);
    return;
  }
  $("video").srcObject = state.stream;
  $("video").hidden = false;
  $("preview").hidden = true;
  $("camera-btn").textContent = "Stop camera";
  $("video").onloadeddata = () => { $("capture-btn").disabled = $("burst-btn").disabled = false; };
  liveLoop();
}

// ------------------------------------------------------------------ teaching
function classExists(name) {
  return state.classes.some((c) => c.name === name.normalize("NFC"));
}

function updateTeachForm() {
  const name = $("class-name").value.trim();
  const n = state.pending.length;
  const exists = name && classExists(name);
  $("teach-btn").disabled = !name || !n;
  $("clear-pending").disabled = !n;
  const ex = `${n} example${n === 1 ? "" : "s"}`;
  $("teach-btn").textContent = !name ? "Teach" : exists ? `Add ${ex} to “${name}”` : `Create “${name}” from ${ex}`;
  const hint = $("teach-hint");
  hint.classList.toggle("extends", Boolean(exists));
  hint.textContent = exists
    ? `“${name}” exists: these examples extend it (its prototype becomes the mean of all its examples).`
    : "A new name creates a class; the name of an existing class adds these examples to it (its prototype becomes the mean of all its examples).";
  for (const b of document.querySelectorAll(".add-examples")) b.disabled = !n;
}

function renderPending() {
  const box = $("pending");
  box.replaceChildren();
  state.pending.forEach((it, i) => {
    const d = document.createElement("div");
    d.className = "item pending-item";
    d.innerHTML = `<img alt="example ${i + 1}"><button title="drop this example">×</button>`;
    d.querySelector("img").src = it.url;
    d.querySelector("button").onclick = () => { state.pending.splice(i, 1); renderPending(); };
    box.append(d);
  });
  updateTeachForm();
}

function addPending(items) {
  state.pending.push(...items);
  renderPending();
}

async function teach(name, create) {
  const items = state.pending.slice();
  $("teach-btn").disabled = true;
  try {
    const r = await state.engine.teach(name, create, items);
    state.pending = [];
    renderPending();
    $("class-name").value = "";
    show(`${r.created ? "Created" : "Extended"} “${r.name}”: ${r.examples ?? "?"} examples in all.`, "info");
    await reload();
  } catch (e) {
    show(`Teaching failed: ${e.message}`);
    updateTeachForm();
  }
}

// ------------------------------------------------------------------ classes and history
function classCard(c) {
  const card = document.createElement("div");
  card.className = "class-card";
  card.dataset.class = c.name;
  card.innerHTML = `<div class="top"><span class="title"></span><span class="count"></span></div>
    <div class="gallery"></div>
    <div class="actions"><button class="secondary add-examples">Add pending examples</button>
    <button class="danger remove-btn">Remove</button></div>`;
  card.querySelector(".count").textContent = c.examples == null ? "" : `${c.examples} example${c.examples === 1 ? "" : "s"}`;
  for (const t of c.thumbnails) {
    const img = document.createElement("img");
    img.src = withToken(`/api/thumbs/${t}`);
    img.alt = `${c.name} example`;
    card.querySelector(".gallery").append(img);
  }
  card.querySelector(".add-examples").onclick = () => teach(c.name, false);
  return card;
}

function compactCard(c) {
  const card = document.createElement("span");
  card.className = "class-card compact";
  card.dataset.class = c.name;
  card.innerHTML = '<span class="title"></span><span class="count"></span><button class="danger remove-btn" title="remove">×</button>';
  card.querySelector(".count").textContent = c.examples == null ? "" : `${c.examples}`;
  return card;
}

// Classes taught on this device get full cards with their galleries; the export's classes are compact chips.
function renderClasses() {
  const taught = state.classes.filter((c) => c.taught_on_device);
  const exported = state.classes.filter((c) => !c.taught_on_device);
  $("class-count").textContent = `(${state.classes.length}: ${taught.length} taught here, ${exported.length} from the export)`;
  $("class-names").replaceChildren(...state.classes.map((c) => Object.assign(document.createElement("option"), { value: c.name })));
  $("classes").replaceChildren(...taught.map(classCard));
  $("exported").replaceChildren(...exported.map(compactCard));
  $("exported-title").hidden = !exported.length;
  if (!taught.length) $("classes").innerHTML = '<p class="muted">No class taught here yet: name one and give it a few examples.</p>';
  for (const card of document.querySelectorAll(".class-card")) {
    const name = card.dataset.class;
    card.querySelector(".title").textContent = name;
    card.querySelector(".title").title = name;
    card.querySelector(".remove-btn").onclick = () => removeClass(name);
  }
  updateTeachForm();
}

async function removeClass(name) {
  try {
    await api(`/api/classes/${encodeURIComponent(name)}`, { method: "DELETE" });
    show(`Removed “${name}”. The history can bring it back.`, "info");
    await reload();
  } catch (e) {
    show(`Remove failed: ${e.message}`);
  }
}

function describe(u) {
  const what = u.op === "add" ? `taught “${u.class}” (${u.examples} example${u.examples === 1 ? "" : "s"})` : `removed “${u.class}”`;
  return u.merged_from ? `${what}, merged` : what;
}

function renderHistory() {
  const h = state.history;
  const ol = $("history");
  ol.replaceChildren();
  const rows = [{ seq: h.base.seq, text: `start: exported bundle (${h.base.classes} classes)`, base: true },
    ...h.updates.map((u) => ({ seq: u.seq, text: describe(u), time: u.time }))];
  for (const r of rows.reverse()) {
    const li = document.createElement("li");
    li.className = "history-row" + (r.seq === h.seq ? " current" : "");
    li.dataset.seq = r.seq;
    li.innerHTML = '<span class="seq"></span><span class="what"></span><span class="muted time"></span>';
    li.querySelector(".seq").textContent = `#${r.seq}`;
    li.querySelector(".what").textContent = r.text;
    li.querySelector(".time").textContent = r.time ? r.time.replace("T", " ").slice(0, 19) : "";
    if (r.seq !== h.seq) {
      const b = document.createElement("button");
      b.className = "secondary rollback-btn";
      b.textContent = "Roll back to here";
      b.onclick = () => rollback(r.seq);
      li.append(b);
    } else {
      li.append(Object.assign(document.createElement("span"), { className: "muted", textContent: "current" }));
    }
    ol.append(li);
  }
}

async function rollback(to) {
  try {
    await api("/api/rollback", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ to }) });
    show(`Rolled back to update #${to}.`, "info");
    await reload();
  } catch (e) {
    show(`Rollback failed: ${e.message}`);
  }
}

const signature = (h) => `${h.seq}/${h.events.length}/${h.classes}/${h.updates.length}`;

// Other tabs, servers and processes update the bundle too: look every few seconds, reload on a change.
async function watch() {
  for (;;) {
    await new Promise((r) => setTimeout(r, 3000));
    try {
      const h = await api("/api/history");
      if (state.history && signature(h) !== signature(state.history)) await reload();
    } catch (e) { /* the server may be restarting: try again later */ }
  }
}

async function reload() {
  const [classes, history] = await Promise.all([api("/api/classes"), api("/api/history")]);
  state.classes = classes.classes;
  state.history = history;
  renderClasses();
  renderHistory();
  await state.engine.refresh();
  setStatus(`${state.info.name}: ${state.classes.length} classes · update #${history.seq} · model runs ${state.engine.name === "browser" ? "in this browser" : "on the server"}`);
}

// ------------------------------------------------------------------ wiring
function dropzone(el, onFiles) {
  el.addEventListener("dragover", (e) => { e.preventDefault(); el.classList.add("over"); });
  el.addEventListener("dragleave", () => el.classList.remove("over"));
  el.addEventListener("drop", (e) => {
    e.preventDefault();
    el.classList.remove("over");
    onFiles([...e.dataTransfer.files]);
  });
}

async function setMode(mode) {
  try {
    state.engine = await engineFor(mode);
    localStorage.setItem("edgecl.mode", mode);
  } catch (e) {
    show(`Cannot run the model in the browser: ${e.message}`);
    state.engine = serverEngine;
    $("mode").value = "server";
  }
  await reload();
}

async function main() {
  $("download").href = withToken("/api/bundle.zip");
  $("files-predict").onchange = (e) => { if (e.target.files[0]) predictItem(fromFile(e.target.files[0])); e.target.value = ""; };
  $("files-teach").onchange = (e) => { addPending([...e.target.files].map(fromFile)); e.target.value = ""; };
  dropzone($("drop-predict"), (files) => files[0] && predictItem(fromFile(files[0])));
  dropzone($("drop-teach"), (files) => addPending(files.map(fromFile)));
  $("camera-btn").onclick = toggleCamera;
  $("capture-btn").onclick = async () => addPending([await fromCamera()]);
  $("burst-btn").onclick = async () => {
    for (let i = 0; i < 10 && state.stream; i++) {
      addPending([await fromCamera()]);
      await new Promise((r) => setTimeout(r, 200));
    }
  };
  $("clear-pending").onclick = () => { state.pending = []; renderPending(); };
  $("teach-unknown").onclick = teachShown;
  $("class-name").oninput = updateTeachForm;
  $("teach-btn").onclick = () => {
    const name = $("class-name").value.trim();
    teach(name, !classExists(name));
  };
  try {
    state.info = await api("/api/info");
  } catch (e) {
    setStatus(`Cannot reach the server: ${e.message}`, "error");
    return;
  }
  $("bundle-name").textContent = `· ${state.info.name}`;
  if (!state.info.browser_mode) {
    $("mode").querySelector("[value=browser]").disabled = true;
    $("mode").title = state.info.browser_mode_unavailable;
  }
  const wanted = new URLSearchParams(location.search).get("mode") || localStorage.getItem("edgecl.mode") || "server";
  $("mode").value = wanted === "browser" && state.info.browser_mode ? "browser" : "server";
  $("mode").onchange = () => setMode($("mode").value);
  await setMode($("mode").value);
  watch();
}

main();
