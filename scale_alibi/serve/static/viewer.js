// scale-alibi viewer: one release's layers on a Leaflet map, its coverage outline, and the
// triplet of a clicked tile side by side. Everything comes from this server (no CDN).
"use strict";

const LAYERS = ["s2", "s1", "naip"];
const LABELS = { s1: "Sentinel-1", s2: "Sentinel-2", naip: "NAIP" };
const HIRES = [[0, 0], [1, 0], [0, 1], [1, 1]]; // row-major children, as contract.names.HIRES_CHILDREN
const MAX_OUTLINE = 20000; // beyond this many triplets draw the bounds only

const map = L.map("map", { zoomControl: true, worldCopyJump: true });
const state = { release: null, control: null, layers: [], outline: null, selected: null };
window.viewer = { map, state };

function enc(s) { return encodeURIComponent(s); }
function status(text) { document.getElementById("status").textContent = text; }

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}

function lonLatToTile(lng, lat, z) {
  const n = 2 ** z;
  const x = Math.floor(((lng + 180) / 360) * n);
  const rad = (lat * Math.PI) / 180;
  const y = Math.floor(((1 - Math.log(Math.tan(rad) + 1 / Math.cos(rad)) / Math.PI) / 2) * n);
  return [x, y];
}

function tileURL(release, layer, z, x, y) {
  return `/tiles/${enc(release)}/${layer}/${z}/${x}/${y}.png`;
}

async function showRelease(doc) {
  state.layers.forEach((l) => map.removeLayer(l));
  if (state.control) map.removeControl(state.control);
  if (state.outline) map.removeLayer(state.outline);
  state.release = doc;
  const [w, s, e, n] = doc.bounds;
  const bounds = L.latLngBounds([s, w], [n, e]);
  // Tiles touching the bounds from outside do not exist: keep Leaflet from asking for them.
  const eps = 1e-7;
  const inner = L.latLngBounds([s + eps, w + eps], [n - eps, e - eps]);
  const base = {};
  state.layers = LAYERS.map((layer) => {
    const lz = doc.layers[layer];
    const tl = L.tileLayer(`/tiles/${enc(doc.name)}/${layer}/{z}/{x}/{y}.png`, {
      minZoom: Math.max(0, lz.minzoom - 2), maxZoom: 22,
      minNativeZoom: lz.minzoom, maxNativeZoom: lz.maxzoom,
      bounds: inner, attribution: layer === "naip" ? "NAIP: USDA, public domain" : "Copernicus Sentinel data",
    });
    base[LABELS[layer]] = tl;
    return tl;
  });
  state.layers[0].addTo(map);
  const overlays = {};
  if (doc.triplets <= MAX_OUTLINE) {
    const cov = await getJSON(`/releases/${enc(doc.name)}/coverage.geojson`);
    state.outline = L.geoJSON(cov, { style: { color: "#ff7800", weight: 1, fill: false }, interactive: false });
  } else {
    state.outline = L.rectangle(bounds, { color: "#ff7800", weight: 1, fill: false, interactive: false });
  }
  state.outline.addTo(map);
  overlays["coverage"] = state.outline;
  state.control = L.control.layers(base, overlays, { collapsed: false }).addTo(map);
  map.fitBounds(bounds);
  status(`${doc.triplets} triplets, zoom ${doc.zooms.join(", ")}`);
}

function loadImage(img, url) {
  return new Promise((resolve, reject) => {
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(url));
    img.src = url;
  });
}

async function showTriplet(latlng) {
  const doc = state.release;
  if (!doc) return;
  for (const z of doc.zooms) {
    const [x, y] = lonLatToTile(latlng.lng, latlng.lat, z);
    const r = await fetch(`/releases/${enc(doc.name)}/triplets/${z}/${x}/${y}`);
    if (!r.ok) continue;
    const meta = await r.json();
    if (state.selected) map.removeLayer(state.selected);
    const n = 2 ** z;
    const lat = (t) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * t) / n))) * 180) / Math.PI;
    state.selected = L.rectangle([[lat(y + 1), (x / n) * 360 - 180], [lat(y), ((x + 1) / n) * 360 - 180]],
      { color: "#00e5ff", weight: 3, fill: false, interactive: false }).addTo(map);
    const panel = document.getElementById("triplet");
    panel.hidden = false;
    panel.dataset.ready = "0";
    document.getElementById("triplet-title").textContent = `${doc.name} ${z}/${x}/${y} (${meta.split})`;
    document.getElementById("triplet-meta").textContent = JSON.stringify(meta, null, 1);
    const singles = ["s1", "s2", "naip"].map((layer) =>
      loadImage(document.getElementById(`triplet-${layer}`), tileURL(doc.name, layer, z, x, y)));
    const canvas = document.getElementById("triplet-hires");
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, 512, 512);
    const children = HIRES.map(([dx, dy]) =>
      loadImage(new Image(), tileURL(doc.name, "naip", z + 1, 2 * x + dx, 2 * y + dy)).then((img) =>
        ctx.drawImage(img, dx * 256, dy * 256)));
    await Promise.all([...singles, ...children]);
    panel.dataset.ready = "1";
    panel.dataset.tile = `${z}/${x}/${y}`;
    map.invalidateSize();
    return;
  }
  status("no triplet here: tiles exist only inside the outline");
}

async function main() {
  const { releases } = await getJSON("/releases");
  const select = document.getElementById("release");
  if (!releases.length) { status("no finished release yet"); map.setView([39, -98], 4); return; }
  releases.forEach((r) => select.add(new Option(`${r.name} (${r.triplets})`, r.name)));
  const wanted = new URLSearchParams(location.search).get("release");
  const pick = releases.find((r) => r.name === wanted) || releases[0];
  select.value = pick.name;
  select.onchange = () => showRelease(releases.find((r) => r.name === select.value));
  await showRelease(pick);
  map.on("click", (ev) => showTriplet(ev.latlng));
  document.getElementById("close").onclick = () => {
    document.getElementById("triplet").hidden = true;
    map.invalidateSize();
  };
  document.body.dataset.ready = "1";
}

main().catch((err) => status(`error: ${err.message}`));
