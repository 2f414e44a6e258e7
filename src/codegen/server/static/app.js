// The codegen page: a conversation (turns -> /v1/chat/completions, program -> /v1/run) and a
// completion playground (/v1/completions with logprobs). No dependencies: it works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { turns: [], busy: false, abort: null, config: {} };

// ------------------------------------------------------------------ API
function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("key").value || localStorage.getItem("codegen-key");
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function post(url, body, signal) {
  const res = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body), signal });
  if (!res.ok) {
    const j = await res.json().catch(() => ({}));
    throw new Error((j.error && j.error.message) || res.status + " " + res.statusText);
  }
  return res;
}

async function* events(url, body, signal) {
  const res = await post(url, body, signal);
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!line.startsWith("data: ")) continue;
      const data = line.slice(6);
      if (data === "[DONE]") return;
      const obj = JSON.parse(data);
      if (obj.error) throw new Error(obj.error.message);
      yield obj;
    }
  }
}

function showError(e) {
  if (e && e.name === "AbortError") return;
  const box = $("error");
  box.textContent = String(e && e.message ? e.message : e);
  box.hidden = false;
  clearTimeout(showError.timer);
  showError.timer = setTimeout(() => (box.hidden = true), 6000);
}

// ------------------------------------------------------------------ highlighting
const KEYWORDS = new Set(("False None True and as assert async await break class continue def del elif else except " +
  "finally for from global if import in is lambda nonlocal not or pass raise return try while with yield").split(" "));
const TOKEN = /(#[^\n]*)|("""[\s\S]*?(?:"""|$)|'''[\s\S]*?(?:'''|$)|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?)|(\b\d[\d_]*(?:\.\d*)?(?:e[+-]?\d+)?\b)|([A-Za-z_]\w*)|([\s\S])/g;

function highlight(code) {
  const out = document.createDocumentFragment();
  let prev = "";
  for (const m of code.matchAll(TOKEN)) {
    const [text, com, str, num, word] = m;
    let cls = null;
    if (com) cls = "com";
    else if (str) cls = "str";
    else if (num) cls = "num";
    else if (word && KEYWORDS.has(word)) cls = "kw";
    else if (word && (prev === "def" || prev === "class")) cls = "fn";
    if (word) prev = word;
    else if (!/\s/.test(text)) prev = "";
    if (cls) {
      const s = document.createElement("span");
      s.className = cls;
      s.textContent = text;
      out.appendChild(s);
    } else out.appendChild(document.createTextNode(text));
  }
  return out;
}

function codeBlock(code) {
  const pre = document.createElement("pre");
  pre.className = "code";
  pre.appendChild(highlight(code));
  return pre;
}

// ------------------------------------------------------------------ the conversation
function messages(upto) {
  const out = [];
  for (const t of state.turns.slice(0, upto)) {
    out.push({ role: "user", content: t.text });
    if (t.code !== null) out.push({ role: "assistant", content: t.code });
  }
  return out;
}

function render() {
  const box = $("turns");
  box.replaceChildren();
  if (!state.turns.length) {
    const p = document.createElement("p");
    p.id = "empty";
    p.className = "muted";
    p.textContent = "Say what the program should do, one step at a time. The model writes the code for each step.";
    box.appendChild(p);
  }
  state.turns.forEach((t, i) => {
    const div = document.createElement("div");
    div.className = "turn";
    div.dataset.index = i;
    const words = document.createElement("div");
    words.className = "words";
    words.textContent = t.text;
    div.appendChild(words);
    if (t.code !== null) div.appendChild(codeBlock(t.code));
    else {
      t.candidates.forEach((c, j) => {
        const cand = document.createElement("div");
        cand.className = "candidate";
        if (t.candidates.length > 1) {
          const h = document.createElement("h3");
          h.textContent = "candidate " + (j + 1);
          if (!state.busy) {
            const use = document.createElement("button");
            use.textContent = "Use this";
            use.className = "use";
            use.onclick = () => accept(i, j);
            h.appendChild(use);
          }
          cand.appendChild(h);
        }
        cand.appendChild(codeBlock(c));
        div.appendChild(cand);
      });
    }
    box.appendChild(div);
  });
  const pending = state.turns.length && state.turns[state.turns.length - 1].code === null;
  $("send").disabled = state.busy || pending;
  $("undo").disabled = state.busy || !state.turns.length;
  $("retry").disabled = state.busy || !state.turns.length;
  $("run").disabled = state.busy || !state.config.allow_run || !state.turns.length;
  $("run").title = state.config.allow_run ? "run the program in the sandbox" : "the server was started without --allow-run";
  $("stop").hidden = !state.busy;
  box.lastElementChild && box.lastElementChild.scrollIntoView({ block: "end" });
}

async function turn(text) {
  const n = Math.max(1, Math.min(8, parseInt($("cands").value, 10) || 1));
  const t = { text, code: null, candidates: Array(n).fill("") };
  state.turns.push(t);
  state.busy = true;
  state.abort = new AbortController();
  render();
  const body = { messages: messages(state.turns.length - 1).concat([{ role: "user", content: text }]), n, stream: true,
                 temperature: parseFloat($("temp").value), top_p: 0.95, top_k: 50,
                 max_tokens: parseInt($("turn-tokens").value, 10) || 256 };
  try {
    for await (const chunk of events("/v1/chat/completions", body, state.abort.signal)) {
      for (const c of chunk.choices) {
        if (c.delta && c.delta.content) {
          t.candidates[c.index] += c.delta.content;
          const blocks = document.querySelectorAll(`.turn[data-index="${state.turns.length - 1}"] pre.code`);
          if (blocks[c.index]) blocks[c.index].replaceChildren(highlight(t.candidates[c.index]));
        }
      }
    }
  } catch (e) {
    state.turns.pop();
    state.busy = false;
    render();
    showError(e);
    return;
  }
  state.busy = false;
  if (n === 1) accept(state.turns.length - 1, 0);
  else render();
}

function accept(i, j) {
  const t = state.turns[i];
  t.code = t.candidates[j];
  delete t.candidates;
  render();
  if ($("autorun").checked && state.config.allow_run) run();
}

async function run() {
  const out = $("output");
  out.className = "";
  out.textContent = "(running)";
  try {
    const res = await post("/v1/run", { messages: messages(state.turns.length) });
    const v = await res.json();
    out.replaceChildren();
    const add = (text, cls) => {
      const s = document.createElement("span");
      if (cls) s.className = cls;
      s.textContent = text;
      out.appendChild(s);
    };
    if (v.stdout) add(v.stdout.endsWith("\n") ? v.stdout : v.stdout + "\n");
    if (v.stderr) add(v.stderr.endsWith("\n") ? v.stderr : v.stderr + "\n", "stderr");
    if (v.error) add("error: " + v.error + "\n", "err");
    add(v.status === "passed" ? `(ran in ${v.seconds.toFixed(2)} s)` : `(${v.status}, ${v.seconds.toFixed(2)} s)`, "muted");
  } catch (e) {
    out.textContent = "";
    showError(e);
  }
}

async function download() {
  try {
    const res = await post("/v1/chat/program", { messages: messages(state.turns.length) });
    const { program } = await res.json();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([program], { type: "text/x-python" }));
    a.download = "program.py";
    a.click();
    URL.revokeObjectURL(a.href);
  } catch (e) {
    showError(e);
  }
}

// ------------------------------------------------------------------ the playground
function tokenSpan(text, logprob, top) {
  const s = document.createElement("span");
  s.className = "tok";
  s.textContent = text;
  if (logprob !== null && logprob !== undefined) {
    let tip = `p = ${Math.exp(logprob).toFixed(3)}`;
    if (top) tip += "\n" + Object.entries(top).map(([t, lp]) => `${JSON.stringify(t)}  ${Math.exp(lp).toFixed(3)}`).join("\n");
    s.dataset.tip = tip;
  }
  return s;
}

async function generate() {
  const prompt = $("prompt").value;
  $("completion-prompt").textContent = prompt;
  const out = $("completion-text");
  out.replaceChildren();
  state.playAbort = new AbortController();
  $("generate").disabled = true;
  $("play-stop").hidden = false;
  const body = { prompt, stream: true, logprobs: 3, temperature: parseFloat($("p-temp").value),
                 top_p: parseFloat($("p-top-p").value), max_tokens: parseInt($("p-max").value, 10) || 64 };
  try {
    for await (const chunk of events("/v1/completions", body, state.playAbort.signal)) {
      for (const c of chunk.choices) {
        const lp = c.logprobs;
        if (lp && lp.tokens.length) {
          // Each released token's text, in order; the chunk's text is their concatenation (cut at a stop).
          let left = c.text;
          lp.tokens.forEach((tok, k) => {
            const piece = tok.startsWith("bytes:") ? "" : tok;
            const shown = k === lp.tokens.length - 1 ? left : left.slice(0, piece.length);
            left = left.slice(shown.length);
            out.appendChild(tokenSpan(shown, lp.token_logprobs[k], lp.top_logprobs && lp.top_logprobs[k]));
          });
          if (left) out.appendChild(document.createTextNode(left));
        } else if (c.text) out.appendChild(document.createTextNode(c.text));
      }
    }
  } catch (e) {
    showError(e);
  } finally {
    $("generate").disabled = false;
    $("play-stop").hidden = true;
  }
}

// ------------------------------------------------------------------ wiring
function showTip(e) {
  const tip = $("tip");
  const t = e.target.closest && e.target.closest("span.tok");
  if (!t || !t.dataset.tip) {
    tip.hidden = true;
    return;
  }
  tip.textContent = t.dataset.tip;
  tip.style.left = e.clientX + 12 + "px";
  tip.style.top = e.clientY + 12 + "px";
  tip.hidden = false;
}

async function init() {
  document.querySelectorAll(".tab").forEach((b) => (b.onclick = () => {
    document.querySelectorAll(".tab").forEach((x) => x.classList.toggle("active", x === b));
    document.querySelectorAll(".pane").forEach((p) => (p.hidden = p.id !== b.dataset.pane));
  }));
  $("key").value = localStorage.getItem("codegen-key") || "";
  $("key").onchange = () => {
    localStorage.setItem("codegen-key", $("key").value);
    loadConfig();
  };
  $("send").onclick = () => {
    const text = $("say").value.trim();
    if (!text || state.busy) return;
    $("say").value = "";
    turn(text);
  };
  $("say").onkeydown = (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("send").click();
    }
  };
  $("stop").onclick = () => state.abort && state.abort.abort();
  $("undo").onclick = () => {
    state.turns.pop();
    render();
  };
  $("retry").onclick = () => {
    const last = state.turns.pop();
    render();
    if (last) turn(last.text);
  };
  $("run").onclick = run;
  $("download").onclick = download;
  $("generate").onclick = generate;
  $("play-stop").onclick = () => state.playAbort && state.playAbort.abort();
  $("completion-text").addEventListener("mousemove", showTip);
  $("completion-text").addEventListener("mouseleave", () => ($("tip").hidden = true));
  await loadConfig();
  document.body.dataset.ready = "1";
}

async function loadConfig() {
  try {
    const res = await fetch("/v1/web/config", { headers: headers() });
    state.config = res.ok ? await res.json() : {};
  } catch (e) {
    showError(e);
  }
  $("key-box").hidden = !state.config.needs_key;
  $("model").textContent = state.config.model || "";
  $("autorun").disabled = !state.config.allow_run;
  render();
}

init();
