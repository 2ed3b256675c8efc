// vidqa live view: polls api/state for streams, counters and tracks; listens to the event feed.
// Plain JS, no build step. Every URL carries the page's ?token= when it has one.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const QUERY = TOKEN ? "?token=" + encodeURIComponent(TOKEN) : "";
const MAX_MJPEG = 4;  // browsers allow ~6 connections per host: more streams use snapshots
const COUNTERS = [  // [key, label, format]
  ["fps", "fps", (v) => Number(v).toFixed(1)],
  ["frames", "frames", (v) => v],
  ["frames_dropped", "dropped", (v) => v],
  ["vlm_queue", "VLM queue", (v) => v],
  ["phase", "phase", formatPhase],
];

function formatPhase(value) {  // {question label: profile | compressed | full}
  if (value === null || typeof value !== "object") return value;
  return Object.entries(value).map(([label, phase]) => label + ": " + phase).join(", ");
}
const cards = new Map();
const logged = new Set();  // keys of the events in the log, so seeding and SSE don't repeat
let seeded = false;
let refreshTimer = null;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function streamCard(stream, useMjpeg) {
  const card = document.getElementById("stream-card").content.firstElementChild.cloneNode(true);
  card.dataset.stream = stream.id;
  card.querySelector(".stream-id").textContent = stream.id;
  const img = card.querySelector("img.frame");
  const base = "streams/" + encodeURIComponent(stream.id);
  if (useMjpeg) {
    img.src = base + "/video" + QUERY;
    img.onerror = () => setTimeout(() => { img.src = base + "/video" + QUERY; }, 2000);
  } else {
    const sep = QUERY ? "&" : "?";
    setInterval(() => { img.src = base + "/snapshot.jpg" + QUERY + sep + "t=" + Date.now(); }, 500);
  }
  document.getElementById("streams").appendChild(card);
  return card;
}

function renderCounters(card, stream) {
  const list = card.querySelector(".counters");
  list.replaceChildren();
  for (const [key, label, format] of COUNTERS) {
    const value = stream.counters[key];
    const item = el("div", null, "counter");
    item.append(el("dt", label), el("dd", value === undefined ? "–" : format(value)));
    item.querySelector("dd").dataset.counter = key;
    if (key === "frames_dropped" && value > 0) item.classList.add("warn");
    list.append(item);
  }
  const running = stream.counters.running !== false;
  card.querySelector(".dot").classList.toggle("off", !running);
  card.querySelector(".size").textContent = stream.size ? stream.size.join("×") : "";
}

function renderStreams(streams) {
  document.getElementById("no-streams").hidden = streams.length > 0;
  for (const stream of streams) {
    if (!cards.has(stream.id)) cards.set(stream.id, streamCard(stream, cards.size < MAX_MJPEG));
    renderCounters(cards.get(stream.id), stream);
  }
}

function answerCell(answer) {
  const cell = el("td");
  const badge = el("span", answer.answer, "badge");
  if (answer.p_yes !== null && answer.p_yes !== undefined) {
    badge.classList.add(answer.answer === "yes" ? "yes" : "no");
  } else {
    badge.classList.add("text");
  }
  cell.append(badge);
  return cell;
}

function pYesCell(pYes) {
  const cell = el("td", null, "num");
  if (pYes === null || pYes === undefined) { cell.textContent = "–"; return cell; }
  const bar = el("span", null, "bar");
  const fill = el("span", null, "fill");
  fill.style.width = Math.round(pYes * 100) + "%";
  bar.append(fill);
  cell.append(bar, el("span", Number(pYes).toFixed(2)));
  return cell;
}

function trackRows(track) {
  // one row per question; the track's own cells span them all
  const answers = track.answers.length ? track.answers : [{question: "", answer: "…"}];
  const span = answers.length;
  return answers.map((answer, index) => {
    const row = el("tr", null, (track.active ? "" : "ended ") + (index === 0 ? "track-first" : ""));
    row.dataset.track = track.stream_id + ":" + track.track_id;
    const spanned = (cell) => { cell.rowSpan = span; return cell; };
    if (index === 0) {
      row.append(spanned(el("td", track.stream_id)),
                 spanned(el("td", "#" + track.track_id, "num strong")));
    }
    row.append(el("td", answer.question, "question"), answerCell(answer), pYesCell(answer.p_yes));
    if (index === 0) {
      const compressed = track.compressed === null ? "–" : (track.compressed ? "yes" : "no");
      row.append(spanned(el("td", compressed)));
      row.append(spanned(el("td", track.plan_id || "–", "mono")));
      const alerts = spanned(el("td", null, "alerts"));
      for (const alert of track.alerts) alerts.append(el("span", alert, "badge alert"));
      row.append(alerts, spanned(el("td", track.last_frame ?? "–", "num")));
    }
    return row;
  });
}

function renderTracks(tracks) {
  const body = document.querySelector("#tracks tbody");
  const rows = tracks.flatMap(trackRows);
  if (!rows.length) {
    const empty = el("tr", null, "empty-row");
    const cell = el("td", "No answers yet");
    cell.colSpan = 9;
    empty.append(cell);
    rows.push(empty);
  }
  body.replaceChildren(...rows);
  document.getElementById("track-count").textContent = tracks.length ? tracks.length : "";
}

function eventKind(event) {
  return event.type || ("alert" in event ? "alert" : "answer");
}

function logEvent(kind, event) {
  const key = [kind, event.stream_id, event.track_id, event.frame, event.question].join("|");
  if (logged.has(key)) return;
  logged.add(key);
  const list = document.getElementById("events");
  const item = el("li", null, "event " + kind);
  const who = "s" + (event.stream_id ?? "?") + " #" + (event.track_id ?? "?");
  item.append(el("span", "f" + (event.frame ?? "?"), "when"), el("span", who, "who"));
  const what = el("span", null, "what");
  if (kind === "alert") {
    what.textContent = event.message || event.alert || event.rule || "alert";
  } else {
    const free = event.p_yes === null || event.p_yes === undefined;
    const badge = el("span", event.answer,
                     "badge " + (free ? "text" : (event.answer === "yes" ? "yes" : "no")));
    what.append(badge, document.createTextNode(event.question || ""));
    what.title = event.question || "";
  }
  item.append(what);
  list.prepend(item);
  while (list.children.length > 15) {
    list.lastElementChild.remove();
  }
  if (logged.size > 500) logged.clear();
}

async function refresh() {
  try {
    const response = await fetch("api/state" + QUERY, {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const state = await response.json();
    renderStreams(state.streams);
    renderTracks(state.tracks);
    if (!seeded) {
      seeded = true;
      for (const event of state.recent_events.slice(-15)) logEvent(eventKind(event), event);
    }
    const count = state.events_published;
    const label = count + (count === 1 ? " event" : " events");
    document.getElementById("event-count").textContent = label;
  } catch (err) {
    setConnection("offline", "pill-bad");
  }
}

function refreshSoon() {
  if (refreshTimer !== null) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; refresh(); }, 200);
}

function setConnection(text, cls) {
  const pill = document.getElementById("connection");
  pill.textContent = text;
  pill.className = "pill " + cls;
}

function listen() {
  const feed = new EventSource("events" + QUERY);
  feed.onopen = () => setConnection("live", "pill-ok");
  feed.onerror = () => setConnection("reconnecting", "pill-wait");
  for (const kind of ["answer", "alert"]) {
    feed.addEventListener(kind, (message) => {
      logEvent(kind, JSON.parse(message.data));
      refreshSoon();
    });
  }
  feed.addEventListener("dropped", (message) => {
    const dropped = JSON.parse(message.data).dropped;
    const pill = document.getElementById("connection");
    pill.title = dropped + " events dropped (this page fell behind)";
  });
}

listen();
refresh();
setInterval(refresh, 1000);
