// The chat page: talks to this server's /v1/chat/completions with stream: true, like any OpenAI client.
// No framework and no build step; the conversation lives in `messages` and is sent whole every turn (the
// server's prefix cache makes the repeated part free). Settings persist in localStorage. With "show tokens" on,
// a reply asks for logprobs and is drawn one span per token, coloured by its probability, with the
// alternatives on hover and the server's timings under it.
"use strict";

const $ = (id) => document.getElementById(id);
const SAMPLING = ["temperature", "top_k", "top_p", "min_p", "repeat_penalty", "presence_penalty",
                  "frequency_penalty", "max_tokens", "seed"];
const SETTINGS = [...SAMPLING, "system", "api_key", "show_tokens"];
const TOP_LOGPROBS = 5;   // alternatives per token asked for when "show tokens" is on
const DEFAULTS = { temperature: 0.8, top_k: 40, top_p: 0.95, min_p: 0.05, repeat_penalty: 1,
                   presence_penalty: 0, frequency_penalty: 0, max_tokens: 512, seed: -1 };

let messages = [];        // [{role, content}] without the system prompt
let controller = null;    // the AbortController of the reply being streamed
let contextLength = null; // tokens per sequence, from /health
let contextUsed = 0;      // prompt + completion tokens of the last reply
const tokenEntries = new WeakMap();   // token span -> its logprobs entry, for the hover popup

// -- settings -------------------------------------------------------------------------------------------

function loadSettings() {
  const saved = JSON.parse(localStorage.getItem("pellucid.settings") || "{}");
  for (const name of SETTINGS) {
    const field = $(name);
    if (saved[name] !== undefined) field[field.type === "checkbox" ? "checked" : "value"] = saved[name];
    field.addEventListener("change", saveSettings);
  }
}

function saveSettings() {
  const values = {};
  for (const name of SETTINGS) {
    const field = $(name);
    values[name] = field.type === "checkbox" ? field.checked : field.value;
  }
  localStorage.setItem("pellucid.settings", JSON.stringify(values));
}

function samplingFields() {
  const fields = {};
  for (const name of SAMPLING) {
    const text = $(name).value.trim();
    if (text !== "") fields[name] = Number(text);
  }
  return fields;
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// -- show tokens: probabilities and alternatives -------------------------------------------------------

const percent = (logprob) => (100 * Math.exp(logprob)).toFixed(1) + "%";

// One token of logprobs.content as a span: its text as the server decoded it (a token that is part of a
// UTF-8 character shows as U+FFFD), its background hue from red (p = 0) to green (p = 1).
function tokenSpan(entry) {
  const span = document.createElement("span");
  span.className = "token";
  span.textContent = entry.token;   // text, never HTML
  span.style.backgroundColor = `hsl(${Math.round(120 * Math.exp(entry.logprob))} 75% 50% / 0.32)`;
  tokenEntries.set(span, entry);
  return span;
}

// The popup's lines: the alternatives the model weighed, most likely first, the chosen one marked ▸ (and
// added under them when sampling picked a token outside the top few).
function alternativesText(entry) {
  const line = (t, mark) => `${mark} ${JSON.stringify(t.token).padEnd(16)} ${percent(t.logprob).padStart(6)}`;
  const top = entry.top_logprobs || [];
  const chosen = top.findIndex((t) => t.token === entry.token);
  const lines = top.map((t, i) => line(t, i === chosen ? "▸" : " "));
  if (chosen < 0) lines.push(...(lines.length ? ["  …"] : []), line(entry, "▸"));
  return lines.join("\n");
}

function showAlternatives(event) {
  const popup = $("token-popup");
  const entry = tokenEntries.get(event.target);
  if (!entry) {
    popup.hidden = true;
    return;
  }
  popup.textContent = alternativesText(entry);
  popup.hidden = false;
  const box = event.target.getBoundingClientRect();
  const left = Math.min(box.left, window.innerWidth - popup.offsetWidth - 8);
  const below = box.bottom + 4 + popup.offsetHeight < window.innerHeight;
  popup.style.left = Math.max(4, left) + "px";
  popup.style.top = (below ? box.bottom + 4 : box.top - 4 - popup.offsetHeight) + "px";
}

// Tokens generated but not part of the reply (a stop string the server cut, a tool call parsed out of the text):
// shown after it, struck through, so the strip still accounts for every token the model produced.
function markTokensNotInReply(answer, reply) {
  let length = 0;
  for (const span of answer.querySelectorAll(".token")) {
    if (length >= reply.length) {
      span.classList.add("cut");
      span.title = "generated, not in the reply (a stop string or a tool call)";
    }
    length += span.textContent.length;
  }
}

// The line under a token-shown reply, from the last chunk's llama-server-style timings.
function statsText(timings, finish) {
  const cached = timings.cache_n ? ` (${timings.cache_n.toLocaleString()} cached)` : "";
  return [
    `${timings.predicted_n.toLocaleString()} tokens`,
    `prompt ${(timings.prompt_n + timings.cache_n).toLocaleString()}${cached}`,
    `${timings.predicted_per_second.toFixed(1)} tok/s`,
    `first token ${Math.round(timings.ttft_ms).toLocaleString()} ms`,
    `finish: ${finish ?? "–"}`,
  ].join(" · ");
}

// -- the conversation -----------------------------------------------------------------------------------

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;   // text, never HTML: a model's output cannot inject markup
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

function addNote(div, text) {
  const note = document.createElement("span");
  note.className = "note";
  note.textContent = text;
  div.appendChild(note);
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").disabled = !busy;
  $("prompt").disabled = busy;
}

function showReadout(tokS, used, approximate) {
  const speed = tokS === null ? "" : `${approximate ? "≈" : ""}${tokS > 0 ? tokS.toFixed(1) : "–"} tok/s`;
  const ctx = contextLength ? `context ${used.toLocaleString()} / ${contextLength.toLocaleString()}` : "";
  $("readout").textContent = [speed, ctx].filter(Boolean).join(" · ");
}

async function send(event) {
  event?.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || controller) return;
  $("prompt").value = "";
  messages.push({ role: "user", content: text });
  addMessage("user", text);
  const bubble = addMessage("assistant streaming", "");
  // A reasoning model's thinking (the server's reasoning_content) goes in a folded block above the answer.
  const thinking = document.createElement("details");
  thinking.className = "thinking";
  thinking.hidden = true;
  const thinkingSummary = document.createElement("summary");
  thinkingSummary.textContent = "thinking";
  const thinkingText = document.createElement("div");
  thinking.append(thinkingSummary, thinkingText);
  const answer = document.createElement("span");
  bubble.append(thinking, answer);
  const showTokens = $("show_tokens").checked;   // read once: the switch applies from the next reply on
  const system = $("system").value.trim();
  const body = {
    messages: system ? [{ role: "system", content: system }, ...messages] : messages,
    stream: true,
    stream_options: { include_usage: true },
    ...(showTokens ? { logprobs: true, top_logprobs: TOP_LOGPROBS } : {}),
    ...samplingFields(),
  };
  controller = new AbortController();
  setBusy(true);
  let reply = "", pieces = 0, firstAt = null, stopped = false, speed = null, timings = null, finish = null;
  const pending = [];   // token spans whose text has not arrived yet
  let lastText = answer;  // where the latest text went: the thinking block or the answer
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({}));
      throw new Error(error.error?.message || `HTTP ${response.status}`);
    }
    for await (const event of sseEvents(response.body)) {
      if (event.error) throw new Error(event.error.message);
      const thought = event.choices?.[0]?.delta?.reasoning_content;
      const delta = event.choices?.[0]?.delta?.content;
      const tokens = event.choices?.[0]?.logprobs?.content;
      // Every generated token's logprobs come exactly once, with its text or ahead of it (an empty delta when
      // the server held the text back: a possible stop string or tool call), so the spans wait until the next
      // text says where they belong: the thinking block or the answer; what never gets text goes after the last.
      if (showTokens && tokens) pending.push(...tokens.map(tokenSpan));
      if (thought || delta) lastText = thought ? thinkingText : answer;
      if (showTokens && (thought || delta)) lastText.append(...pending.splice(0));
      if (thought) {
        thinking.hidden = false;
        if (!showTokens) thinkingText.textContent += thought;   // text, never HTML
        pieces += 1;
        firstAt = firstAt ?? performance.now();
      }
      if (delta) {
        reply += delta;
        pieces += 1;
        firstAt = firstAt ?? performance.now();
        if (!showTokens) answer.textContent = reply;
        bubble.scrollIntoView({ block: "end" });
        const seconds = (performance.now() - firstAt) / 1000;
        showReadout(seconds > 0 ? (pieces - 1) / seconds : 0, contextUsed + pieces, true);
      }
      if (event.timings) {  // the last chunk: the server's own measurement replaces the estimate
        timings = event.timings;
        speed = event.timings.predicted_per_second;
        showReadout(speed, contextUsed + pieces, false);
      }
      if (event.usage) {
        contextUsed = event.usage.total_tokens;
        showReadout(speed, contextUsed, false);
      }
      finish = event.choices?.[0]?.finish_reason ?? finish;
      if (event.choices?.[0]?.finish_reason === "length") addNote(bubble, "(stopped: max_tokens or the context is full)");
    }
  } catch (error) {
    if (error.name === "AbortError") {
      stopped = true;
      addNote(bubble, "(stopped)");
    } else {
      bubble.classList.add("error");
      addNote(bubble, "error: " + error.message);
    }
  } finally {
    bubble.classList.remove("streaming");
    if (showTokens) lastText.append(...pending.splice(0));   // text held back and then dropped (whitespace)
    if (showTokens) markTokensNotInReply(answer, reply);
    if (showTokens && timings) {
      const stats = document.createElement("span");
      stats.className = "stats";
      stats.textContent = statsText(timings, finish);
      bubble.appendChild(stats);
    }
    controller = null;
    setBusy(false);
    $("prompt").focus();
  }
  if (reply || stopped) messages.push({ role: "assistant", content: reply });
  else messages.pop();  // the request failed: forget the question too, so it can be sent again
}

// Server-Sent Events from a fetch body: yields each `data:` payload parsed as JSON, until [DONE].
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      yield JSON.parse(data);
    }
  }
}

function stop() {
  controller?.abort();   // closing the connection makes the server cancel the generation and free its slot
}

function reset() {
  stop();
  messages = [];
  contextUsed = 0;
  $("log").replaceChildren();
  showReadout(null, 0, false);
}

async function connect() {
  try {
    const health = await (await fetch("/health")).json();
    $("model").textContent = health.model;
    contextLength = health.context_length ?? null;
    showReadout(null, 0, false);
    if (health.has_chat_template === false) {
      $("warning").textContent = `${health.model} has no chat template: it is probably a base model, so it ` +
        "gets a plain 'User: / Assistant:' transcript it was not trained on. Expect weak replies.";
      $("warning").hidden = false;
    }
  } catch (error) {
    $("model").textContent = "server unreachable: " + error.message;
  }
}

$("composer").addEventListener("submit", send);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) send(e);
});
$("stop").addEventListener("click", stop);
$("log").addEventListener("mouseover", showAlternatives);
$("log").addEventListener("mouseleave", () => { $("token-popup").hidden = true; });
$("reset").addEventListener("click", reset);
$("defaults").addEventListener("click", () => {
  for (const [name, value] of Object.entries(DEFAULTS)) $(name).value = value;
  saveSettings();
});
loadSettings();
connect();
