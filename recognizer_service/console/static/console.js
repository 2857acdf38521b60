// RLLFPR console: the Live page's event stream, the Cameras page's refresh. No framework,
// no build step; every value is written with textContent (never parsed as HTML).
"use strict";

const MAX_ROWS = 500;

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function faceImage(messageId) {
  const img = document.createElement("img");
  img.src = "/console/faces/" + encodeURIComponent(messageId) + ".png";
  img.alt = "scrambled face " + messageId;
  img.width = 48;
  img.height = 48;
  watchImage(img);
  return img;
}

function watchImage(img) {
  const expired = () => {
    const gone = document.createElement("span");
    gone.className = "hint";
    gone.textContent = "expired";
    gone.title = "kept for recognizer.console.face_retention_s only";
    img.replaceWith(gone);
  };
  if (img.complete && img.naturalWidth === 0 && img.getAttribute("src")) expired();
  else img.addEventListener("error", expired);
}

function eventRow(e) {
  const row = document.createElement("tr");
  row.className = e.decision + " fresh";
  row.dataset.event = e.event_id;
  const when = document.createElement("time");
  when.dateTime = e.decided_at;
  when.textContent = e.decided_at.slice(11, 19);
  cell(row, "").appendChild(when);
  cell(row, e.site);
  cell(row, e.camera);
  cell(row, e.decision === "match" ? e.subject : "unknown", "decision");
  const unit = e.score_kind === "s_norm" ? " σ" : "";  // S-norm: standard deviations
  cell(row, e.score.toFixed(3) + unit);
  cell(row, e.margin.toFixed(3) + unit);
  cell(row, String(e.track_id));
  cell(row, String(e.key_epoch));
  cell(row, e.latency_ms + " ms");
  const faces = cell(row, "", "faces");
  for (const id of e.faces) faces.appendChild(faceImage(id));
  return row;
}

function startLive() {
  const table = document.getElementById("events");
  const body = table.tBodies[0];
  const state = document.getElementById("stream-state");
  const wanted = table.dataset;
  const shownUnknown = document.getElementById("unknown-shown");
  const seen = new Set(Array.from(body.rows, (r) => r.dataset.event));
  const source = new EventSource("/console/stream");
  source.addEventListener("open", () => { state.textContent = "live"; state.className = "hint live"; });
  source.addEventListener("error", () => { state.textContent = "reconnecting…"; state.className = "hint"; });
  source.addEventListener("recognition", (message) => {
    const e = JSON.parse(message.data);
    document.getElementById("unknown-total").textContent = e.counts.unknown;
    document.getElementById("events-total").textContent = e.counts.events;
    if (seen.has(e.event_id)) return;
    if ((wanted.site && e.site !== wanted.site) || (wanted.camera && e.camera !== wanted.camera)
        || (wanted.decision && e.decision !== wanted.decision)) return;
    seen.add(e.event_id);
    body.insertBefore(eventRow(e), body.firstChild);
    while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
    if (e.decision === "unknown") shownUnknown.textContent = Number(shownUnknown.textContent) + 1;
    document.getElementById("empty").hidden = true;
  });
}

function startCameras() {
  const body = document.getElementById("camera-rows");
  setInterval(async () => {
    const response = await fetch("/cameras?fragment=rows", { credentials: "same-origin" });
    if (response.status === 401) { location.reload(); return; }
    if (response.ok) body.innerHTML = await response.text();  // server-rendered, escaped
  }, 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("img").forEach(watchImage);
  const page = document.body.dataset.page;
  if (page === "live") startLive();
  if (page === "cameras") startCameras();
});
