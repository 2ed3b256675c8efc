// The history page: filters over the event store, one page of rows at a time (newest first),
// snapshots as thumbnails, alert clips in a player. Plain JS, no build step; every URL carries
// the page's ?token= when it has one. The filters live in the URL's #hash, so a view can be
// bookmarked or shared.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const withToken = (url) => TOKEN ? url + (url.includes("?") ? "&" : "?") + "token=" +
  encodeURIComponent(TOKEN) : url;
const PAGE = 50;
const FIELDS = ["stream", "question", "answer", "zone", "rule", "run", "since", "until"];

const COLUMNS = {
  answers: [["Time", r => when(r.answered_at)], ["Stream", r => r.stream_id],
            ["Track", r => r.track_id], ["Question", r => r.question],
            ["Answer", r => badge(r.answer)], ["p(yes)", r => number(r.p_yes)],
            ["From", r => r.source ? `ask ${r.ask_id}, ${r.source}` : "live"],
            ["Crop", r => thumbnail(r.snapshot)]],
  alerts: [["Time", r => when(r.raised_at)], ["Stream", r => r.stream_id],
           ["Track", r => r.track_id], ["Rule", r => r.rule], ["Zone", r => r.zone],
           ["Answer", r => badge(r.answer)], ["Dwell", r => number(r.dwell_s) + " s"],
           ["Snapshot", r => thumbnail(r.snapshot)], ["Clip", r => clipButton(r.clip)]],
  tracks: [["First seen", r => when(r.first_seen_at)], ["Last seen", r => when(r.last_seen_at)],
           ["Stream", r => r.stream_id], ["Track", r => r.track_id],
           ["Answers", r => answersOf(r.answers)], ["Crop", r => thumbnail(r.snapshot)]],
};

const form = document.getElementById("filters");
const table = document.getElementById("history");
const status = document.getElementById("status");
const older = document.getElementById("older");
let facets = {questions: {}};
let next = null;
let loading = 0;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

const pad = (n) => String(n).padStart(2, "0");
function when(epoch) {
  if (epoch == null) return "";
  const d = new Date(epoch * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
         `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}
const number = (v) => v == null ? "" : Number(v).toFixed(2);
function badge(answer) {
  const kind = answer === "yes" ? "yes" : answer === "no" ? "no" : "text";
  return el("span", {class: `badge ${kind}`}, answer);
}
function thumbnail(path) {
  if (!path) return "";
  const src = withToken("media/" + path);
  return el("a", {href: src, target: "_blank"}, el("img", {class: "thumb", src, loading: "lazy",
                                                           alt: path}));
}
function clipButton(path) {
  if (!path) return "";
  const button = el("button", {type: "button", class: "play", "data-clip": path}, "Play");
  button.addEventListener("click", () => play(path));
  return button;
}
function answersOf(answers) {
  const list = el("span", {class: "answers"});
  for (const [question, a] of Object.entries(answers || {})) {
    list.append(el("span", {class: "qa", title: question}, short(question) + " ", badge(a.answer)));
  }
  return list;
}
const short = (text) => text.length > 32 ? text.slice(0, 30) + "…" : text;

function play(path) {
  const video = document.getElementById("clip");
  video.src = withToken("media/" + path);
  document.getElementById("player").showModal();
  video.play().catch(() => {});
}
document.getElementById("player").addEventListener("close", () => {
  const video = document.getElementById("clip");
  video.pause();
  video.removeAttribute("src");
});

function option(select, value, label = value) {
  select.append(el("option", {value}, label));
}

function fill(name, values, labels = (v) => v) {
  const select = form.elements[name];
  const keep = select.value;
  select.replaceChildren(el("option", {value: ""}, "any"));
  for (const value of values) option(select, value, labels(value));
  if ([...select.options].some(o => o.value === keep)) select.value = keep;
}

function fillAnswers() {
  const question = form.elements.question.value;
  const answers = question ? facets.questions[question] || [] :
    [...new Set(Object.values(facets.questions).flat())].sort();
  fill("answer", answers);
}

async function getJson(url) {
  const response = await fetch(withToken(url), {cache: "no-store"});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function toEpoch(local) {
  return local ? String(new Date(local).getTime() / 1000) : "";
}
function toLocal(epoch) {
  if (!epoch) return "";
  const d = new Date(Number(epoch) * 1000);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
         `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function currentFilters() {
  const params = new URLSearchParams();
  params.set("kind", form.elements.kind.value);
  for (const name of FIELDS) {
    const raw = form.elements[name].value;
    const value = name === "since" || name === "until" ? toEpoch(raw) : raw;
    if (value) params.set(name, value);
  }
  return params;
}

function restore() {
  const params = new URLSearchParams(location.hash.slice(1));
  form.elements.kind.value = params.get("kind") || "answers";
  for (const name of FIELDS) {
    const value = params.get(name) || "";
    form.elements[name].value = name === "since" || name === "until" ? toLocal(value) : value;
  }
}

function header(kind) {
  table.tHead.replaceChildren(el("tr", {}, ...COLUMNS[kind].map(([title]) => el("th", {}, title))));
}

async function load(more = false) {
  const ticket = ++loading;
  const params = currentFilters();
  const kind = params.get("kind");
  params.delete("kind");
  params.set("limit", PAGE);
  if (more && next != null) params.set("before", next);
  status.textContent = "Loading…";
  let page;
  try {
    page = await getJson(`api/${kind}?${params}`);
  } catch (err) {
    if (ticket === loading) status.textContent = "Could not load: " + err.message;
    return;
  }
  if (ticket !== loading) return;  // a newer request has started
  if (!more) {
    header(kind);
    table.tBodies[0].replaceChildren();
  }
  for (const row of page.rows) {
    table.tBodies[0].append(el("tr", {"data-id": row.id, "data-kind": kind},
      ...COLUMNS[kind].map(([, cell]) => el("td", {}, cell(row)))));
  }
  next = page.next;
  older.hidden = next == null;
  const shown = table.tBodies[0].rows.length;
  status.textContent = shown ? `${shown} ${kind}${next == null ? "" : " (older ones below)"}` :
    `No ${kind} match these filters`;
  document.body.dataset.loaded = String(Date.now());
}

async function loadFacets() {
  facets = await getJson("api/facets");
  fill("stream", facets.streams);
  fill("question", Object.keys(facets.questions));
  fillAnswers();
  fill("zone", facets.zones);
  fill("rule", facets.rules);
  fill("run", facets.runs, (id) => `run ${id}`);
  if (facets.first_at) {
    document.getElementById("store-span").textContent =
      `${when(facets.first_at)} – ${when(facets.last_at)}`;
  }
}

function apply(event) {
  if (event) event.preventDefault();
  const params = currentFilters();
  history.replaceState(null, "", "#" + params.toString());
  load(false);
}

form.addEventListener("submit", apply);
form.elements.question.addEventListener("change", fillAnswers);
for (const radio of form.elements.kind) radio.addEventListener("change", () => apply());
document.getElementById("clear").addEventListener("click", () => {
  form.reset();
  apply();
});
older.addEventListener("click", () => load(true));

// The ask box: POST the question with the filters, then poll the ask's progress and its
// answers (the store is the channel) until its process ends.
const askForm = document.getElementById("ask");
const askStatus = document.getElementById("ask-status");
const ASK_FILTERS = ["stream", "run", "zone", "since", "until"];
const ASK_POLL_MS = 1000;

askForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const question = askForm.elements.question.value.trim();
  if (!question) return;
  const params = currentFilters();
  const filters = {};
  for (const name of ASK_FILTERS) if (params.get(name)) filters[name] = params.get(name);
  askStatus.textContent = "Starting…";
  const response = await fetch(withToken("api/ask"), {
    method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({question, filters})});
  const body = await response.json();
  if (!response.ok) {
    askStatus.textContent = "Could not ask: " + (body.error || response.statusText);
    return;
  }
  document.getElementById("ask-button").disabled = true;
  watchAsk(body.tag);
});

async function watchAsk(tag) {
  let state;
  try {
    state = await getJson(`api/asks?tag=${encodeURIComponent(tag)}`);
  } catch (err) {
    askStatus.textContent = "Lost the ask: " + err.message;
    document.getElementById("ask-button").disabled = false;
    return;
  }
  const ask = state.ask;
  if (ask) {
    const page = await getJson(`api/answers?ask=${ask.id}&limit=1000`);
    showAsked(ask, page.rows);
  }
  if (state.running) {
    if (!ask) askStatus.textContent = "Loading the model…";
    setTimeout(() => watchAsk(tag), ASK_POLL_MS);
    return;
  }
  document.getElementById("ask-button").disabled = false;
  const last = state.output.length ? state.output[state.output.length - 1] : "";
  askStatus.textContent = ask && ask.end_reason ? `Ask ${ask.id} ${ask.end_reason}` :
    "The ask ended: " + last;
  document.body.dataset.asked = ask ? (ask.end_reason || "") : "failed";
}

function showAsked(ask, rows) {
  const counts = {};
  for (const row of rows) counts[row.answer] = (counts[row.answer] || 0) + 1;
  const summary = Object.entries(counts).map(([a, n]) => `${a}: ${n}`).join(", ");
  askStatus.textContent = `Ask ${ask.id}: ${ask.answered} of ${ask.tracks} tracks answered` +
    ` (${ask.from_features} from stored features, ${ask.from_crops} from crops)`;
  document.getElementById("ask-counts").textContent =
    `“${ask.question}” — ${summary || "no answers yet"}`;
  const body = document.querySelector("#ask-table tbody");
  body.replaceChildren(...rows.map((r) => el("tr", {"data-id": r.id},
    el("td", {}, when(r.answered_at)), el("td", {}, r.stream_id), el("td", {}, r.track_id),
    el("td", {}, badge(r.answer)), el("td", {}, number(r.p_yes)), el("td", {}, r.source || ""),
    el("td", {}, thumbnail(r.snapshot)))));
  document.getElementById("ask-results").hidden = false;
}

(async () => {
  try {
    await loadFacets();
  } catch (err) {
    status.textContent = "No history: " + err.message;
    return;
  }
  restore();
  fillAnswers();
  restore();
  load(false);
})();
