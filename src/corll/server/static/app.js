// corll's browser editor. Plain JavaScript, no dependencies. Every text from the model or a user is
// put on the page with textContent, never as HTML; the API key lives in sessionStorage and travels
// only in the Authorization header.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("corll-key"), me: null, completion: null, draft: "", before: null };

// --- the edit cost corll learns from: Levenshtein distance over word and punctuation tokens -----------
// The same tokens as corll.feedback.TOKEN: Python's \w is exactly [\p{L}\p{N}_], and its whitespace is
// WHITESPACE below, so that the page and corll count the same tokens. The diff shows whitespace words.
const WHITESPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/;
const TOKEN = /[\p{L}\p{N}_]+(?:['\u2019-][\p{L}\p{N}_]+)*|[^\p{L}\p{N}_\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]/gu;
const words = (text) => text.split(WHITESPACE).filter((w) => w.length > 0);
const tokens = (text) => text.match(TOKEN) || [];

function editDistance(a, b) {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = row;
  }
  return previous[b.length];
}

// A word diff (longest common subsequence): [["same"|"del"|"ins", word], ...]
function wordDiff(a, b) {
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint16Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) { out.push(["same", a[i]]); i++; j++; }
    else if (j < m && (i === n || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push(["ins", b[j]]); j++; }
    else { out.push(["del", a[i]]); i++; }
  }
  return out;
}

function renderDiff(container, before, after) {
  container.replaceChildren();
  for (const [kind, word] of wordDiff(words(before), words(after))) {
    const node = document.createElement(kind === "same" ? "span" : kind);
    node.textContent = word;
    container.append(node, " ");
  }
}

// --- the API -------------------------------------------------------------------------------------
async function api(path, { method = "GET", body } = {}) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${state.key}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error?.message || `${response.status} ${response.statusText}`);
  return data;
}

const versionName = (id) => (id ? `version ${id}` : "the base model");

// --- signing in ----------------------------------------------------------------------------------
async function signIn(key) {
  state.key = key;
  try {
    state.me = await api("/v1/me");
  } catch (error) {
    state.key = null;
    sessionStorage.removeItem("corll-key");
    $("sign-in-error").textContent = `Sign-in failed: ${error.message}`;
    return;
  }
  sessionStorage.setItem("corll-key", key);
  $("sign-in-error").textContent = "";
  $("who").textContent = `${state.me.user} · ${state.me.tenant}${state.me.admin ? " (admin)" : ""} · ${state.me.model}`;
  document.body.classList.toggle("admin", state.me.admin);
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("prompt").focus();
}

function signOut() {
  sessionStorage.removeItem("corll-key");
  location.reload();
}

// --- the writing pad -----------------------------------------------------------------------------
async function draft() {
  const prompt = $("prompt").value.trim();
  if (!prompt) { $("pad-error").textContent = "Write what corll should draft first."; return; }
  const messages = [];
  if ($("instructions").value.trim()) messages.push({ role: "system", content: $("instructions").value.trim() });
  messages.push({ role: "user", content: prompt });
  $("pad-error").textContent = "";
  $("pad-status").textContent = "Drafting…";
  $("draft-button").disabled = true;
  $("draft-area").hidden = false;
  $("draft").value = "";
  $("draft").readOnly = true;
  state.completion = null;
  for (const button of document.querySelectorAll(".reaction")) button.setAttribute("aria-pressed", "false");
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { Authorization: `Bearer ${state.key}`, "Content-Type": "application/json" },
      body: JSON.stringify({ model: state.me.model, messages, stream: true }),
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(data.error?.message || `${response.status} ${response.statusText}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const chunk = JSON.parse(line.slice(6));
          if (chunk.error) throw new Error(chunk.error.message);
          state.completion = chunk.id;
          const version = Number((chunk.system_fingerprint || "").split("-").pop()) || null;
          $("draft-version").textContent = versionName(version);
          $("draft").value += chunk.choices?.[0]?.delta?.content || "";
        }
      }
    }
    state.draft = $("draft").value;
    $("pad-status").textContent = "Edit the draft, then keep it.";
    updateDiff();
    $("draft").readOnly = false;
    $("draft").focus();
  } catch (error) {
    $("pad-error").textContent = `Drafting failed: ${error.message}`;
    $("pad-status").textContent = "";
  } finally {
    $("draft-button").disabled = false;
  }
}

function updateDiff() {
  $("cost").textContent = String(editDistance(tokens(state.draft), tokens($("draft").value)));
  renderDiff($("diff"), state.draft, $("draft").value);
}

async function keep() {
  if (!state.completion) return;
  const text = $("draft").value;
  if (!text.trim()) { $("pad-error").textContent = "The kept text is empty: write what you would send."; return; }
  try {
    await api("/v1/feedback", { method: "POST", body: { completion_id: state.completion, edit: text } });
    const cost = editDistance(tokens(state.draft), tokens(text));
    $("pad-status").textContent = cost ? `Kept: ${cost} tokens edited. corll learns from this edit.`
      : "Kept as drafted (recorded as accepted).";
    $("pad-error").textContent = "";
  } catch (error) {
    $("pad-error").textContent = `Keeping failed: ${error.message}`;
  }
}

async function react(button) {
  if (!state.completion) return;
  try {
    await api("/v1/feedback", { method: "POST", body: { completion_id: state.completion, reaction: button.dataset.reaction } });
    for (const other of document.querySelectorAll(".reaction")) other.setAttribute("aria-pressed", String(other === button));
    $("pad-status").textContent = `Reaction recorded: ${button.dataset.reaction}.`;
  } catch (error) {
    $("pad-error").textContent = `Reacting failed: ${error.message}`;
  }
}

// --- history -------------------------------------------------------------------------------------
const keptText = (item) => item.feedback.filter((f) => f.kind === "edit").map((f) => f.edit).pop();
const promptText = (item) => item.messages.filter((m) => m.role === "user").map((m) => m.content).pop() || "";

function field(parent, label, text, className = "text") {
  const title = document.createElement("strong");
  title.textContent = label;
  const body = document.createElement("div");
  body.className = className;
  body.textContent = text;
  parent.append(title, body);
  return body;
}

async function loadHistory(more = false) {
  try {
    const query = new URLSearchParams({ limit: "10" });
    if (more && state.before) query.set("before", state.before);
    const page = await api(`/v1/interactions?${query}`);
    if (!more) $("history-list").replaceChildren();
    for (const item of page.data) {
      const li = document.createElement("li");
      const meta = document.createElement("p");
      meta.className = "meta";
      const reactions = item.feedback.filter((f) => f.kind === "reaction").map((f) => f.reaction);
      const kept = keptText(item);
      meta.textContent = `${new Date(item.created_at).toLocaleString()} · ${versionName(item.policy_version)}` +
        (state.me.admin ? ` · ${item.user}` : "") + (reactions.length ? ` · ${reactions.pop()}` : "") +
        (kept !== undefined ? ` · ${editDistance(tokens(item.response), tokens(kept))} tokens edited` : " · not kept yet");
      li.append(meta);
      field(li, "Prompt", promptText(item));
      field(li, "Draft", item.response);
      if (kept !== undefined) {
        field(li, "Kept", kept);
        const diff = field(li, "What changed", "", "diff");
        renderDiff(diff, item.response, kept);
      }
      $("history-list").append(li);
    }
    state.before = page.next_before;
    $("older").hidden = !page.next_before;
    $("history-error").textContent = "";
  } catch (error) {
    $("history-error").textContent = `Loading the history failed: ${error.message}`;
  }
}

// --- what corll learned --------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawChart(points, promotions) {
  const chart = $("chart");
  chart.replaceChildren();
  const [width, height, left, bottom] = [600, 220, 36, 24];
  if (!points.length) {
    chart.append(svg("text", { x: left, y: height / 2 }, "No kept drafts yet."));
    return;
  }
  const top = Math.max(1, ...points.map((p) => p.cost));
  const x = (i) => left + (points.length === 1 ? 0 : (i * (width - left - 8)) / (points.length - 1));
  const y = (cost) => height - bottom - (cost * (height - bottom - 10)) / top;
  chart.append(svg("line", { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: "axis" }),
    svg("line", { x1: left, y1: 10, x2: left, y2: height - bottom, class: "axis" }),
    svg("text", { x: 2, y: 16 }, String(top)), svg("text", { x: 2, y: height - bottom }, "0"),
    svg("text", { x: left, y: height - 6 }, "oldest"), svg("text", { x: width - 44, y: height - 6 }, "newest"));
  for (const index of promotions) {
    chart.append(svg("line", { x1: x(index), y1: 10, x2: x(index), y2: height - bottom, class: "promotion" }));
  }
  chart.append(svg("polyline", { class: "cost", points: points.map((p, i) => `${x(i)},${y(p.cost)}`).join(" ") }));
}

function rollbackButton(label, body) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.addEventListener("click", async () => {
    try {
      await api("/v1/rollback", { method: "POST", body });
      await loadLearned();
    } catch (error) {
      $("learned-error").textContent = `Rollback failed: ${error.message}`;
    }
  });
  return button;
}

async function loadLearned() {
  try {
    const [page, versions] = await Promise.all([api("/v1/interactions?limit=200"), api("/v1/versions")]);
    const whose = $("chart-user").value;
    const kept = page.data.filter((item) => keptText(item) !== undefined && (!whose || item.user === whose)).reverse();
    const points = kept.map((item) => ({ cost: editDistance(tokens(item.response), tokens(keptText(item))),
      version: item.policy_version }));
    const promoted = new Set(versions.data.filter((v) => v.decision === "promoted").map((v) => v.id));
    const firstUse = new Map();
    points.forEach((p, i) => { if (promoted.has(p.version) && !firstUse.has(p.version)) firstUse.set(p.version, i); });
    drawChart(points, [...firstUse.values()]);

    const body = $("versions").querySelector("tbody");
    body.replaceChildren();
    for (const v of [...versions.data].reverse()) {
      const row = document.createElement("tr");
      for (const text of [String(v.id), v.user || "(shared)", v.status,
        v.decision ? `${v.decision}: ${v.reason}` : v.reason]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      const action = document.createElement("td");
      action.className = "admin-only";
      if (state.me.admin && v.status !== "active" && v.status !== "retired" && v.status !== "rejected") {
        action.append(rollbackButton(`Serve version ${v.id}`, { version: v.id }));
      }
      row.append(action);
      body.append(row);
    }
    const users = new Set([...versions.data.map((v) => v.user), ...page.data.map((i) => i.user)].filter(Boolean));
    const option = (value, label) => Object.assign(document.createElement("option"), { value, textContent: label ?? value });
    $("users").replaceChildren(...[...users].sort().map((u) => option(u)));
    $("chart-user").replaceChildren(option("", "Every user of the tenant"), ...[...users].sort().map((u) => option(u)));
    $("chart-user").value = whose;
    $("learned-error").textContent = "";
  } catch (error) {
    $("learned-error").textContent = `Loading what corll learned failed: ${error.message}`;
  }
}

// --- wiring --------------------------------------------------------------------------------------
function show(view) {
  for (const tab of document.querySelectorAll(".tab")) tab.setAttribute("aria-pressed", String(tab.dataset.view === view));
  for (const section of document.querySelectorAll(".view")) section.hidden = section.id !== view;
  if (view === "history") loadHistory();
  if (view === "learned") loadLearned();
}

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", (event) => { event.preventDefault(); signIn($("key").value.trim()); });
  $("sign-out").addEventListener("click", signOut);
  $("draft-form").addEventListener("submit", (event) => { event.preventDefault(); draft(); });
  $("draft").addEventListener("input", updateDiff);
  $("keep").addEventListener("click", keep);
  for (const button of document.querySelectorAll(".reaction")) button.addEventListener("click", () => react(button));
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => show(tab.dataset.view));
  $("older").addEventListener("click", () => loadHistory(true));
  $("chart-user").addEventListener("change", loadLearned);
  $("base-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const user = $("base-user").value.trim();
    try {
      await api("/v1/rollback", { method: "POST", body: user ? { version: 0, user } : { version: 0 } });
      await loadLearned();
    } catch (error) {
      $("learned-error").textContent = `Rollback failed: ${error.message}`;
    }
  });
  document.addEventListener("keydown", (event) => {
    if (!(event.ctrlKey || event.metaKey) || $("app").hidden) return;
    if (event.key === "Enter") { event.preventDefault(); draft(); }
    if (event.key === "s") { event.preventDefault(); keep(); }
  });
  if (state.key) signIn(state.key);
});
