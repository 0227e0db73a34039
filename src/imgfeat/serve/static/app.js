// imgfeat web page: search by image, review duplicate groups. Plain JS, no build step.
// Everything from the server is put into the page with textContent/attributes, never innerHTML.
"use strict";

// A token in the address (http://host:8000/#token=TOKEN) becomes a same-site cookie that goes with
// every request of this page (thumbnails too); the fragment never reaches the server or its logs.
(function takeToken() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    document.cookie = `imgfeat_token=${encodeURIComponent(decodeURIComponent(match[1]))}; path=/; SameSite=Strict`;
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 10;
let groupOffset = 0;

// --- shared ---------------------------------------------------------------------------------

async function requestJson(url, options) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const error = (body && body.error) || response.status;
    const detail = (body && body.detail) || response.statusText;
    throw new Error(`${error}: ${detail}`);
  }
  return body;
}

function setStatus(element, text, isError) {
  element.textContent = text;
  element.classList.toggle("error", Boolean(isError));
}

function baseName(path) {
  return String(path || "").split(/[\\/]/).pop();
}

// A thumbnail card; `item` carries id, path, box, width, height (+ score/label when known).
function card(item, caption) {
  const node = $("card-template").content.firstElementChild.cloneNode(true);
  const frame = node.querySelector(".frame");
  frame.href = `/items/${encodeURIComponent(item.id)}`;
  if (item.width && item.height) {
    frame.style.aspectRatio = `${item.width} / ${item.height}`;
  }
  const img = node.querySelector(".thumb");
  img.src = `/thumb/${encodeURIComponent(item.id)}`;
  img.alt = baseName(item.path);
  const box = node.querySelector(".box");
  // groups files carry no crop column: a label there means an object box
  const hasObject = item.crop ? item.crop === "object" : Boolean(item.label);
  if (item.box && item.width && item.height && hasObject) {
    const [x1, y1, x2, y2] = item.box;
    box.style.left = `${(100 * x1) / item.width}%`;
    box.style.top = `${(100 * y1) / item.height}%`;
    box.style.width = `${(100 * (x2 - x1)) / item.width}%`;
    box.style.height = `${(100 * (y2 - y1)) / item.height}%`;
  } else {
    box.remove();
  }
  node.querySelector(".score").textContent = caption;
  node.querySelector(".label").textContent = item.label || "";
  node.querySelector(".path").textContent = baseName(item.path);
  node.querySelector(".path").title = item.path || "";
  return node;
}

// --- search ---------------------------------------------------------------------------------

function drawPreview(file, query) {
  const canvas = $("preview");
  const url = URL.createObjectURL(file);
  const image = new Image();
  image.onload = () => {
    const scale = Math.min(1, 480 / image.naturalWidth, 360 / image.naturalHeight);
    canvas.width = Math.round(image.naturalWidth * scale);
    canvas.height = Math.round(image.naturalHeight * scale);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
    URL.revokeObjectURL(url);
    if (query.crop !== "object" || !query.box) {
      return;
    }
    // boxes are in full-resolution pixels of the (EXIF-oriented) image the server decoded
    const sx = canvas.width / query.width;
    const sy = canvas.height / query.height;
    const [x1, y1, x2, y2] = query.box;
    ctx.lineWidth = 3;
    ctx.strokeStyle = "#ff3b30";
    ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
    const text = `${query.label} ${query.score.toFixed(2)}`;
    ctx.font = "bold 14px system-ui, sans-serif";
    const textWidth = ctx.measureText(text).width;
    const ty = Math.max(0, y1 * sy - 20);
    ctx.fillStyle = "#ff3b30";
    ctx.fillRect(x1 * sx, ty, textWidth + 10, 20);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x1 * sx + 5, ty + 15);
  };
  image.src = url;
}

async function search(file) {
  const status = $("search-status");
  const results = $("results");
  results.replaceChildren();
  setStatus(status, `Searching for ${file.name}…`);
  const form = new FormData();
  form.append("image", file);
  const started = performance.now();
  let answer;
  try {
    answer = await requestJson(`/search?k=${$("k").value}`, { method: "POST", body: form });
  } catch (err) {
    $("preview-figure").hidden = true;
    setStatus(status, `Could not search: ${err.message}`, true);
    return;
  }
  const query = answer.query;
  $("preview-figure").hidden = false;
  drawPreview(file, query);
  $("detection").textContent = query.crop === "object"
    ? `main object: ${query.label} (${query.score.toFixed(2)}), ${query.width}×${query.height}`
    : `no object found: the whole ${query.width}×${query.height} image was embedded`;
  const ms = Math.round(performance.now() - started);
  setStatus(status, `${answer.results.length} most similar images (${ms} ms)`);
  for (const item of answer.results) {
    results.append(card(item, item.score.toFixed(3)));
  }
}

function setUpSearch() {
  const drop = $("drop");
  const input = $("file");
  input.addEventListener("change", () => {
    if (input.files.length) {
      search(input.files[0]);
    }
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) {
      search(file);
    }
  });
}

// --- duplicates -----------------------------------------------------------------------------

async function markNotDuplicate(group, section, button) {
  button.disabled = true;
  try {
    await requestJson("/reviews", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ids: group.items.map((item) => item.id), verdict: "not-duplicate" }),
    });
    section.classList.add("reviewed");
    button.textContent = "marked not duplicate";
  } catch (err) {
    button.disabled = false;
    setStatus($("groups-status"), `Could not save the review: ${err.message}`, true);
  }
}

function groupSection(group) {
  const section = document.createElement("section");
  section.className = "group";
  section.dataset.group = group.group;
  const head = document.createElement("header");
  const title = document.createElement("strong");
  title.textContent = `group ${group.group} · ${group.items.length} images`;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "not-duplicate";
  button.textContent = "Not duplicate";
  if (group.verdict) {
    section.classList.add("reviewed");
    button.disabled = true;
    button.textContent = `marked ${group.verdict}`;
  }
  button.addEventListener("click", () => markNotDuplicate(group, section, button));
  head.append(title, button);
  const grid = document.createElement("div");
  grid.className = "grid";
  for (const item of group.items) {
    const caption = item.is_representative
      ? "representative"
      : (item.score === null || item.score === undefined ? "" : `similarity ${item.score.toFixed(3)}`);
    const node = card(item, caption);
    node.classList.toggle("representative", Boolean(item.is_representative));
    grid.append(node);
  }
  section.append(head, grid);
  return section;
}

async function loadGroups() {
  const status = $("groups-status");
  const list = $("groups");
  setStatus(status, "Loading groups…");
  let page;
  try {
    page = await requestJson(`/groups?offset=${groupOffset}&limit=${PAGE_SIZE}`);
  } catch (err) {
    list.replaceChildren();
    setStatus(status, err.message, true);
    $("prev").disabled = $("next").disabled = true;
    return;
  }
  list.replaceChildren(...page.groups.map(groupSection));
  const last = Math.min(page.offset + page.groups.length, page.total);
  $("page-info").textContent = page.total
    ? `groups ${page.offset + 1}–${last} of ${page.total}`
    : "no duplicate groups";
  setStatus(status, "");
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
}

function setUpDuplicates() {
  $("prev").addEventListener("click", () => {
    groupOffset = Math.max(0, groupOffset - PAGE_SIZE);
    loadGroups();
  });
  $("next").addEventListener("click", () => {
    groupOffset += PAGE_SIZE;
    loadGroups();
  });
}

// --- tabs and health ------------------------------------------------------------------------

function show(view) {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.dataset.view === view);
  }
  $("view-search").hidden = view !== "search";
  $("view-duplicates").hidden = view !== "duplicates";
  if (view === "duplicates") {
    loadGroups();
  }
}

async function loadHealth() {
  try {
    const health = await requestJson("/healthz");
    $("health").textContent = `${health.items} images indexed · ${health.models.detector} + ${health.models.embedder}`;
  } catch (err) {
    setStatus($("health"), `service unavailable: ${err.message}`, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => show(tab.dataset.view));
  }
  setUpSearch();
  setUpDuplicates();
  loadHealth();
});
