// brainmri web page: upload images to /v1/predict and show the calibrated result. No external code.
"use strict";

const state = { threshold: 0.5, modelThreshold: 0.5, gradcamAvailable: true, results: [] };
const $ = (id) => document.getElementById(id);

const PLAIN = {
  empty_file: "The file is empty.",
  unsupported_media_type: "This file is not an image the model can read (JPEG, PNG, BMP, TIFF, DICOM or NIfTI).",
  unreadable_image: "The image could not be decoded; it may be damaged.",
  truncated_image: "The image file is incomplete (truncated); try re-exporting or re-downloading it.",
  degenerate_image: "The file decodes but holds no usable picture (blank, tiny or a thin strip).",
  image_too_large: "The image has too many pixels for this server.",
  payload_too_large: "The file is larger than this server accepts.",
  preprocess_failed: "The image was read but could not be prepared for the model.",
  unauthorized: "This server needs an API key: enter it above and try again.",
  overloaded: "The server is busy; please try again in a moment.",
  timeout: "The server took too long to answer.",
  invalid_request: "The request was not understood.",
};

function headers() {
  const key = $("api-key").value;
  return key ? { "X-API-Key": key } : {};
}

function pct(p) { return (100 * p).toFixed(1) + "%"; }

async function loadModel() {
  try {
    const r = await fetch("/v1/model", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw body;
    const m = body.model;
    const cal = body.card.calibration && body.card.calibration.calibrated ? "calibrated" : "not calibrated";
    $("model").textContent = `Model ${m.name} (card sha256 ${m.card_sha256.slice(0, 12)}…, ${m.runtime} runtime, ${cal}); ` +
      `classes: ${body.card.classes.join(", ")}.`;
    if (typeof body.threshold === "number") {
      state.modelThreshold = body.threshold;
      setThreshold(body.threshold);
    }
  } catch (err) {
    const e = (err && err.error) || {};
    if (e.code === "unauthorized") $("key-box").hidden = false;
    $("model").textContent = "Model information unavailable: " + (e.message || String(err));
  }
}

function setThreshold(t) {
  state.threshold = t;
  $("threshold").value = String(t);
  $("threshold-value").textContent = t.toFixed(2);
  document.querySelectorAll(".result").forEach(updateTumour);
}

function updateTumour(card) {
  const line = card.querySelector(".tumour");
  const p = parseFloat(card.dataset.tumorProbability);
  if (Number.isNaN(p)) { line.textContent = ""; return; }
  const yes = p >= state.threshold;
  line.className = "tumour " + (yes ? "yes" : "no");
  line.textContent = `${yes ? "Tumour" : "No tumour"} at threshold ${state.threshold.toFixed(2)} ` +
    `(tumour probability ${pct(p)})`;
}

function newCard(name) {
  const card = $("result-template").content.firstElementChild.cloneNode(true);
  card.querySelector(".name").textContent = name;
  card.querySelector(".label").textContent = "analysing…";
  $("results").prepend(card);
  return card;
}

function showError(card, error, status) {
  card.classList.add("failed");
  card.dataset.state = "error";
  const el = card.querySelector(".error");
  const plain = PLAIN[error.code] || `The server could not process this file (HTTP ${status}).`;
  el.textContent = `${plain} Details: ${error.message || "none"}`;
  el.hidden = false;
  if (error.code === "unauthorized") $("key-box").hidden = false;
}

function renderBars(card, probs, label) {
  const bars = card.querySelector(".bars");
  bars.replaceChildren();
  for (const [cls, p] of Object.entries(probs).sort((a, b) => b[1] - a[1])) {
    const row = document.createElement("div");
    row.className = "bar" + (cls === label ? " top" : "");
    row.dataset.cls = cls;
    const name = document.createElement("span");
    name.textContent = cls.replace("_", " ");
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = (100 * p).toFixed(1) + "%";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "pct";
    value.textContent = pct(p);
    row.append(name, track, value);
    bars.append(row);
  }
}

function render(card, pred, note) {
  card.dataset.state = "done";
  card.dataset.tumorProbability = pred.tumor_probability === null ? "" : String(pred.tumor_probability);
  card.querySelector(".label").textContent = pred.label.replace("_", " ");
  card.querySelector(".confidence").textContent = `(calibrated probability ${pct(pred.confidence)})`;
  renderBars(card, pred.probabilities, pred.label);
  const cset = pred.conformal_set;
  card.querySelector(".cset").textContent = cset === null ? "Conformal set: not available (uncalibrated model)." :
    `Conformal set (${pct(1 - pred.conformal_alpha)} coverage): ${cset.length ? cset.join(", ") : "empty"}`;
  const u = pred.uncertainty;
  card.querySelector(".review").textContent = u.review ? "Needs review: " + u.review_reasons.join("; ") : "";
  if (pred.in_domain === false || typeof pred.ood_score === "number") {
    const ood = card.querySelector(".ood");
    ood.hidden = false;
    const why = Array.isArray(pred.ood_reasons) && pred.ood_reasons.length ? ` (${pred.ood_reasons.join("; ")})` : "";
    ood.textContent = (pred.in_domain === false ? `This image looks unlike the training data${why}; treat the result with caution. ` : "In domain. ") +
      (typeof pred.ood_score === "number" ? `Out-of-domain score ${pred.ood_score.toFixed(3)}. ` : "") +
      (typeof pred.ood_block_score === "number" ? `Low-level score ${pred.ood_block_score.toFixed(3)}.` : "");
  }
  if (pred.preview_png_base64) card.querySelector(".preview").src = "data:image/png;base64," + pred.preview_png_base64;
  if (pred.gradcam_png_base64) {
    card.querySelector(".cam").src = "data:image/png;base64," + pred.gradcam_png_base64;
    card.querySelector(".cam-fig").hidden = false;
  }
  card.querySelector(".note").textContent = note || "";
  updateTumour(card);
}

async function post(file, gradcam) {
  const form = new FormData();
  form.append("file", file, file.name);
  const q = new URLSearchParams({ preview: "true", gradcam: String(gradcam), tta: String($("tta").checked) });
  const r = await fetch("/v1/predict?" + q, { method: "POST", body: form, headers: headers() });
  let body;
  try { body = await r.json(); } catch { body = { error: { code: "bad_response", message: `HTTP ${r.status}` } }; }
  return { r, body };
}

async function analyse(file) {
  const card = newCard(file.name);
  try {
    const wantCam = $("gradcam").checked && state.gradcamAvailable;
    let { r, body } = await post(file, wantCam);
    let note = "";
    if (r.status === 501 && wantCam) {
      state.gradcamAvailable = false;
      note = "Grad-CAM is not available on this server: " + body.error.message;
      ({ r, body } = await post(file, false));
    }
    if (!r.ok) return showError(card, body.error || {}, r.status);
    const t = body.timings_ms || {};
    render(card, body.prediction, (note ? note + " " : "") + `Server time ${(t.total || 0).toFixed(0)} ms.`);
  } catch (err) {
    showError(card, { code: "network", message: "could not reach the server (" + err + ")" }, 0);
  }
}

async function handleFiles(list) {
  const files = Array.from(list);
  if (!files.length) return;
  $("status").textContent = `Analysing ${files.length} file${files.length > 1 ? "s" : ""}…`;
  const queue = files.slice();
  const worker = async () => { while (queue.length) await analyse(queue.shift()); };
  await Promise.all([worker(), worker()]);
  $("status").textContent = `Done: ${files.length} file${files.length > 1 ? "s" : ""}.`;
}

function setup() {
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handleFiles(e.dataTransfer.files); });
  $("files").addEventListener("change", (e) => { handleFiles(e.target.files); e.target.value = ""; });
  $("threshold").addEventListener("input", (e) => setThreshold(parseFloat(e.target.value)));
  $("threshold-reset").addEventListener("click", () => setThreshold(state.modelThreshold));
  $("clear").addEventListener("click", () => { $("results").replaceChildren(); $("status").textContent = ""; });
  $("api-key").addEventListener("change", loadModel);
  loadModel();
}

document.addEventListener("DOMContentLoaded", setup);
