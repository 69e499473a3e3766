// AlignGPT web chat: one image per conversation, streamed answers, the gate's weights as a bar chart.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { imageDataUrl: null, messages: [], modelName: null, controller: null };

function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadModelName() {
  try {
    const health = await (await fetch("/health")).json();
    state.modelName = health.model;
    $("model-name").textContent = `model: ${health.model}` + (health.auth_required ? " (API key required)" : "");
  } catch (err) {
    $("model-name").textContent = "server unreachable";
  }
}

// --- image -----------------------------------------------------------------------------------------------------
function setImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    setStatus("Please choose an image file.");
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    state.imageDataUrl = reader.result;
    $("preview").src = reader.result;
    $("preview").hidden = false;
    $("drop-hint").hidden = true;
    $("remove-image").disabled = false;
    resetChat("New image: the conversation starts over.");
  };
  reader.readAsDataURL(file);
}

function removeImage() {
  state.imageDataUrl = null;
  $("preview").hidden = true;
  $("preview").removeAttribute("src");
  $("drop-hint").hidden = false;
  $("remove-image").disabled = true;
  $("image-input").value = "";
  resetChat("Image removed: the conversation starts over.");
}

function resetChat(note) {
  if (state.controller) state.controller.abort();
  state.messages = [];
  $("messages").replaceChildren();
  drawGate(null);
  setStatus(note || "Conversation cleared.");
}

// --- rendering ---------------------------------------------------------------------------------------------------
function addBubble(role, text, imageUrl) {
  const bubble = document.createElement("div");
  bubble.className = `msg ${role}`;
  if (imageUrl) {
    const img = document.createElement("img");
    img.src = imageUrl;
    img.alt = "your image";
    bubble.appendChild(img);
  }
  const span = document.createElement("span");
  span.className = "text";
  span.textContent = text;
  bubble.appendChild(span);
  $("messages").appendChild(bubble);
  $("messages").scrollTop = $("messages").scrollHeight;
  return span;
}

function drawGate(alignment) {
  const chart = $("gate-chart");
  chart.replaceChildren();
  if (!alignment || !alignment.weights) {
    $("gate-note").textContent = alignment === undefined
      ? "No gate weights for this answer (text-only question or a model without a gate)."
      : "Ask a question about an image to see how the gate weights the alignment levels.";
    return;
  }
  const weights = alignment.weights;
  const top = Math.max(...weights);
  $("gate-note").textContent =
    `α over ${weights.length} local alignment levels (mode: ${alignment.mode}); the global level is always added. Bars are scaled to the largest α.`;
  weights.forEach((value, index) => {
    const row = document.createElement("div");
    row.className = "gate-row";
    row.dataset.level = String(index);
    const label = document.createElement("span");
    label.textContent = `level ${index}`;
    const track = document.createElement("div");
    track.className = "gate-track";
    const bar = document.createElement("div");
    bar.className = "gate-bar";
    bar.style.width = `${top > 0 ? (100 * value) / top : 0}%`;
    track.appendChild(bar);
    const number = document.createElement("span");
    number.className = "value";
    number.textContent = value.toFixed(3);
    row.append(label, track, number);
    chart.appendChild(row);
  });
}

function setStatus(text) {
  $("status").textContent = text || "";
}

function busy(on) {
  $("send").disabled = on;
  $("stop").hidden = !on;
}

// --- requests ----------------------------------------------------------------------------------------------------
function requestMessages(question) {
  const messages = state.messages.map((m) => ({ role: m.role, content: m.content }));
  const isFirst = !state.messages.some((m) => m.role === "user");
  if (state.imageDataUrl && isFirst) {
    messages.push({
      role: "user",
      content: [
        { type: "image_url", image_url: { url: state.imageDataUrl } },
        { type: "text", text: question },
      ],
    });
  } else {
    messages.push({ role: "user", content: question });
  }
  return messages;
}

async function send(question) {
  const firstTurn = !state.messages.some((m) => m.role === "user");
  const messages = requestMessages(question);
  const body = {
    model: state.modelName,
    messages,
    stream: true,
    temperature: Number($("temperature").value),
    top_p: Number($("top-p").value),
    max_tokens: Number($("max-tokens").value),
  };
  addBubble("user", question, firstTurn ? state.imageDataUrl : null);
  const answer = addBubble("assistant", "");
  answer.parentElement.classList.add("streaming");
  busy(true);
  setStatus("Generating…");
  state.controller = new AbortController();
  let text = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(body),
      signal: state.controller.signal,
    });
    if (!response.ok) {
      const error = await response.json().catch(() => ({ error: { message: response.statusText } }));
      throw new Error(`${response.status}: ${error.error ? error.error.message : response.statusText}`);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let done = false;
    while (!done) {
      const chunk = await reader.read();
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") { done = true; break; }
          const payload = JSON.parse(data);
          if (payload.error) throw new Error(payload.error.message);
          if ("alignment" in payload) drawGate(payload.alignment || undefined);
          const delta = payload.choices && payload.choices[0] && payload.choices[0].delta;
          if (delta && delta.content) {
            text += delta.content;
            answer.dataset.chunks = String(Number(answer.dataset.chunks || 0) + 1);
            answer.textContent = text;
            $("messages").scrollTop = $("messages").scrollHeight;
          }
        }
      }
    }
    text = text.trim();
    answer.textContent = text;
    state.messages.push(messages[messages.length - 1]);
    state.messages.push({ role: "assistant", content: text });
    setStatus("");
  } catch (err) {
    if (err.name === "AbortError") {
      setStatus("Stopped.");
      answer.parentElement.remove();
    } else {
      answer.parentElement.className = "msg error";
      answer.textContent = `Error ${err.message}`;
      setStatus("");
    }
  } finally {
    answer.parentElement.classList.remove("streaming");
    state.controller = null;
    busy(false);
  }
}

// --- wiring ------------------------------------------------------------------------------------------------------
function wire() {
  const zone = $("drop-zone");
  zone.addEventListener("click", () => $("image-input").click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("image-input").click(); });
  $("image-input").addEventListener("change", (e) => setImage(e.target.files[0]));
  ["dragenter", "dragover"].forEach((name) => zone.addEventListener(name, (e) => {
    e.preventDefault();
    zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((name) => zone.addEventListener(name, (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
  }));
  zone.addEventListener("drop", (e) => setImage(e.dataTransfer.files[0]));
  $("remove-image").addEventListener("click", removeImage);
  $("reset").addEventListener("click", () => resetChat());
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const question = $("question").value.trim();
    if (!question || state.controller) return;
    $("question").value = "";
    send(question);
  });
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  loadModelName();
}

wire();
