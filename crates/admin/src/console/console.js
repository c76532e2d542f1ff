// The Porchlight console: polls the admin API every two seconds and shows
// endpoints with live presence (and, on a click, who watches one), partners
// with their traffic, charts of the last hour, the cluster's members, the federation lists, and policy decisions; forms set
// an endpoint's presence, allow, block or remove a domain, and explain a
// policy decision step by step. The token stays in this tab's session storage
// and travels only in the Authorization header.
"use strict";

const REFRESH_MS = 2000;
const LABELS = {
  "online": "Online", "online-idle": "Online (idle)", "busy": "Busy", "busy-idle": "Busy (idle)",
  "do-not-disturb": "Do not disturb", "be-right-back": "Be right back", "away": "Away",
  "offline": "Offline", "unknown": "Unknown",
};

let token = null;
let timer = null;

function $(selector) { return document.querySelector(selector); }

function element(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(child ?? ""));
  }
  return node;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: Object.assign({ "Authorization": "Bearer " + token },
      body ? { "Content-Type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  if (response.status === 401) {
    sessionStorage.removeItem("porchlight-token");
    showLogin("That token was refused.");
    throw new Error("unauthorized");
  }
  const text = await response.text();
  if (!response.ok) throw new Error(text.trim() || response.statusText);
  return text ? JSON.parse(text) : null;
}

function showLogin(message) {
  clearInterval(timer);
  $("#main").hidden = true;
  $("#login").hidden = false;
  $("#connection").textContent = message || "";
}

function duration(seconds) {
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds / 3600) % 24, m = Math.floor(seconds / 60) % 60;
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m";
}

function renderCounters(status) {
  const store = status.store;
  const items = [
    ["Subscriptions", status.subscriptions_active],
    ["New", status.subscriptions_created],
    ["Refreshed", status.subscriptions_refreshed],
    ["Expired", status.subscriptions_expired],
    ["NOTIFYs sent", status.notifies_sent],
    ["NOTIFYs failed", status.notifies_failed],
    ["Connections", status.connections],
    ["Transactions", status.server_transactions + status.client_transactions],
    ["Proxied now", status.proxied_in_progress],
    ["Waiting for DNS", status.parked],
    ["Store", store ? store.records_written + " written" : "memory only"],
    ["Uptime", duration(status.uptime_secs)],
  ];
  $("#counters").replaceChildren(...items.map(([name, value]) =>
    element("div", {}, element("dt", {}, name), element("dd", {}, String(value)))));
}

function sources(e) {
  const parts = [];
  if (e.set_by_admin) parts.push("set by admin");
  if (e.registered !== null) parts.push(e.registered ? "registered" : "not registered");
  if (e.healthy !== null) parts.push(e.healthy ? "healthy" : "unhealthy");
  return parts.join(", ") || "static";
}

function renderEndpoints(endpoints) {
  $("#endpoints tbody").replaceChildren(...endpoints.map((e) => element("tr", { "data-endpoint": e.uri },
    element("td", {}, e.uri),
    element("td", {}, e.display_name),
    element("td", {}, element("span", { class: "availability band-" + e.availability, title: String(e.availability_value) },
      LABELS[e.availability] || e.availability)),
    element("td", {}, e.note || ""),
    element("td", { class: "number watchers" },
      e.watchers ? element("a", { href: "#watchers", "data-watchers": e.uri }, String(e.watchers)) : "0"),
    element("td", { class: "muted" }, sources(e)))));
  $("#endpoint-uris").replaceChildren(...endpoints.map((e) => element("option", { value: e.uri })));
  const select = $("#presence-form select[name=endpoint]");
  const chosen = select.value;
  const uris = endpoints.map((e) => e.uri);
  if (select.options.length !== uris.length || uris.some((u, i) => select.options[i].value !== u)) {
    select.replaceChildren(...uris.map((u) => element("option", { value: u }, u)));
    if (uris.includes(chosen)) select.value = chosen;
  }
}

// A certificate within two weeks of its expiry is shown as a warning,
// the same time ahead the node logs one.
const CERTIFICATE_WARNING_SECS = 14 * 86400;

function unixDate(seconds) {
  return new Date(seconds * 1000).toISOString().slice(0, 10);
}

function expiresSoon(seconds) {
  return seconds != null && seconds - Date.now() / 1000 < CERTIFICATE_WARNING_SECS;
}

function renderPartners(partners) {
  const rows = partners.length ? partners.map((p) => element("tr", {},
    element("td", {}, p.partner),
    element("td", { class: "number" }, String(p.requests_in)),
    element("td", { class: "number" }, String(p.requests_refused)),
    element("td", { class: "number" }, String(p.requests_out)),
    element("td", { class: expiresSoon(p.certificate_not_after) ? "warning" : "muted" },
      p.certificate_not_after == null ? "not seen" : unixDate(p.certificate_not_after))))
    : [element("tr", {}, element("td", { colspan: "5", class: "muted" }, "No federated traffic yet."))];
  $("#partners tbody").replaceChildren(...rows);
}

// A node alone has no cluster section; a member shows every node with
// the time its lease has left (a lapsed lease is a node gone) and the
// subscriptions it holds (a drained node hands them over).
function renderCluster(cluster) {
  $("#cluster").hidden = !cluster;
  if (!cluster) return;
  $("#cluster-summary").textContent = "This is node " + cluster.node + ": " + cluster.shared +
    " changes shared, " + cluster.applied + " applied from other nodes, " + cluster.share_failures +
    " not shared at once.";
  $("#members tbody").replaceChildren(...cluster.members.map((m) => element("tr", { "data-node": String(m.node) },
    element("td", {}, String(m.node) + (m.this_node ? " (this node)" : "")),
    element("td", {}, m.internal),
    element("td", { class: m.lease_left_ms === null ? "lapsed" : "number" },
      m.lease_left_ms === null ? "lapsed" : (m.lease_left_ms / 1000).toFixed(1) + " s"),
    element("td", { class: "number" }, String(m.subscriptions) + (m.draining ? " (draining)" : "")))));
}

function renderFederation(lists) {
  const items = [
    ...lists.allowed.map((d) => element("li", { "data-domain": d.domain, "data-list": "allowed" },
      "allowed ", element("strong", {}, d.domain),
      d.proxy_fqdn ? " via " + d.proxy_fqdn : "", d.verified ? "" : " (unverified)")),
    ...lists.blocked.map((d) => element("li", { "data-domain": d, "data-list": "blocked" },
      "blocked ", element("strong", {}, d))),
  ];
  $("#federation-lists").replaceChildren(...(items.length ? items
    : [element("li", { class: "muted" }, "No domain allowed or blocked: the edge switches decide.")]));
}

function renderDecisions(counts, refusals) {
  const rows = counts.filter((d) => d.count > 0).map((d) => element("tr", {},
    element("td", {}, d.way), element("td", {}, d.kind),
    element("td", {}, d.allowed ? "allowed" : "refused"),
    element("td", { class: "number" }, String(d.count))));
  $("#decision-counts tbody").replaceChildren(...(rows.length ? rows
    : [element("tr", {}, element("td", { colspan: "4", class: "muted" }, "No decisions yet."))]));
  $("#refusals").replaceChildren(...refusals.slice(0, 20).map((r) => element("li", {},
    element("strong", {}, r.kind + " " + r.from + " \u2192 " + r.to),
    " ", element("span", { class: "muted" }, new Date(r.at * 1000).toLocaleString()),
    element("pre", {}, r.steps.join("\n")))));
}

// The last hour, from the samples the node keeps of itself (no external
// service): gauges as they were, counters as rates between two samples.
// Fetched again only once a new sample can be there.
const SVG = "http://www.w3.org/2000/svg";
const CHART_WIDTH = 300, CHART_HEIGHT = 80, HOUR_SECS = 3600;
const PALETTE = ["#2f5fd0", "#d0612f", "#2f9e5f", "#9e2fd0", "#c9a227", "#2fb5d0", "#d02f7a", "#6b7385"];
let historyFetched = 0, historyInterval = 0;

function gauge(samples, value) {
  return samples.map((s) => [s.at, value(s)]);
}

function rate(samples, value) {
  const points = [];
  for (let i = 1; i < samples.length; i++) {
    const [a, b] = [samples[i - 1], samples[i]];
    const [va, vb] = [value(a), value(b)];
    if (va != null && vb != null && b.at > a.at && vb >= va) points.push([b.at, (vb - va) / (b.at - a.at)]);
  }
  return points;
}

function shown(value) {
  return Number.isInteger(value) ? String(value) : value.toFixed(1);
}

function ago(seconds) {
  return seconds >= 120 ? "\u2212" + Math.round(seconds / 60) + " min" : "\u2212" + seconds + " s";
}

// Draws `lines` ({name, points}) from `start` to `end` (at most the
// hour) into the figure `id`; its caption gives each line's latest value.
function drawChart(id, title, lines, start, end) {
  const span = Math.max(1, end - start);
  const figure = $("#" + id);
  const top = Math.max(1, ...lines.flatMap((l) => l.points.map((p) => p[1])));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${CHART_WIDTH} ${CHART_HEIGHT}`);
  svg.setAttribute("preserveAspectRatio", "none");
  lines.forEach((line, i) => {
    const polyline = document.createElementNS(SVG, "polyline");
    polyline.setAttribute("points", line.points.map(([at, v]) =>
      ((at - start) / span * CHART_WIDTH).toFixed(1) + "," +
      (CHART_HEIGHT - v / top * (CHART_HEIGHT - 4)).toFixed(1)).join(" "));
    polyline.setAttribute("stroke", PALETTE[i % PALETTE.length]);
    polyline.dataset.name = line.name;
    svg.append(polyline);
  });
  const legend = lines.length ? lines.map((line, i) => {
    const last = line.points.length ? shown(line.points[line.points.length - 1][1]) : "–";
    return element("span", { class: "legend", style: "color:" + PALETTE[i % PALETTE.length] },
      (lines.length > 1 ? line.name + " " : "") + last);
  }) : [element("span", { class: "muted" }, "none yet")];
  figure.dataset.last = lines.length && lines[0].points.length
    ? shown(lines[0].points[lines[0].points.length - 1][1]) : "";
  figure.dataset.points = String(lines.length ? lines[0].points.length : 0);
  figure.replaceChildren(element("figcaption", {}, title, " ", ...legend), svg, element("div", { class: "axis muted" },
    element("span", {}, ago(span)), element("span", {}, "top " + shown(top)), element("span", {}, "now")));
}

function renderHistory(history) {
  const samples = history.samples;
  if (!samples.length) return;
  const end = samples[samples.length - 1].at;
  // A node up for less than the hour is charted over the time it has.
  const start = Math.max(end - HOUR_SECS, samples[0].at);
  drawChart("chart-subscriptions", "Subscriptions",
    [{ name: "active", points: gauge(samples, (s) => s.subscriptions_active) }], start, end);
  drawChart("chart-notifies", "NOTIFYs per second", [
    { name: "sent", points: rate(samples, (s) => s.notifies_sent) },
    { name: "failed", points: rate(samples, (s) => s.notifies_failed) }], start, end);
  drawChart("chart-refusals", "Refusals per second",
    [{ name: "refused", points: rate(samples, (s) => s.refused) }], start, end);
  const partners = [...new Set(samples.flatMap((s) => s.partners.map((p) => p.partner)))].sort();
  drawChart("chart-partners", "Partner requests per second", partners.map((partner) => ({
    name: partner,
    points: rate(samples, (s) => s.partners.find((p) => p.partner === partner)?.requests),
  })), start, end);
}

async function refreshHistory() {
  if (Date.now() - historyFetched < historyInterval * 1000) return;
  const history = await api("GET", "/api/v1/history");
  historyFetched = Date.now();
  historyInterval = history.interval_secs;
  renderHistory(history);
}

async function refresh() {
  try {
    const [status, refusals, federation] = await Promise.all([
      api("GET", "/api/v1/status"), api("GET", "/api/v1/decisions"), api("GET", "/api/v1/federation"),
      refreshHistory()]);
    $("#node").textContent = status.domains.join(", ") + " \u00b7 Porchlight " + status.version;
    renderCounters(status);
    renderEndpoints(status.endpoints);
    renderPartners(status.partners);
    renderCluster(status.cluster);
    renderFederation(federation);
    renderDecisions(status.decisions, refusals);
    if (watched && !$("#watchers").hidden) showWatchers(watched);
    $("#connection").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    if (error.message !== "unauthorized") $("#connection").textContent = "cannot reach the node: " + error.message;
  }
}

function start(newToken) {
  token = newToken;
  sessionStorage.setItem("porchlight-token", token);
  $("#login").hidden = true;
  $("#main").hidden = false;
  refresh();
  clearInterval(timer);
  timer = setInterval(refresh, REFRESH_MS);
}

async function setPresence(clear) {
  const form = $("#presence-form");
  const uri = form.endpoint.value;
  const path = "/api/v1/endpoints/" + encodeURIComponent(uri) + "/presence";
  try {
    const view = clear ? await api("DELETE", path)
      : await api("PUT", path, { availability: form.availability.value, note: form.note.value });
    $("#presence-result").textContent = uri + " is now " + (LABELS[view.availability] || view.availability);
    refresh();
  } catch (error) {
    $("#presence-result").textContent = error.message;
  }
}

let watched = null;

async function showWatchers(uri) {
  watched = uri;
  try {
    const detail = await api("GET", "/api/v1/endpoints/" + encodeURIComponent(uri));
    $("#watchers-of").textContent = uri + " (" + detail.watchers + ")";
    const listed = detail.watcher_uris.map((w) => element("li", {}, w));
    if (detail.watchers > detail.watcher_uris.length) {
      listed.push(element("li", { class: "muted" }, "and " + (detail.watchers - detail.watcher_uris.length) + " more"));
    }
    $("#watcher-list").replaceChildren(...(listed.length ? listed
      : [element("li", { class: "muted" }, "Nobody watches it now.")]));
    $("#watchers").hidden = false;
  } catch (error) {
    $("#watchers-of").textContent = uri + ": " + error.message;
  }
}

async function explain() {
  const form = $("#explain-form");
  const query = new URLSearchParams({
    from: form.from.value.trim(), to: form.to.value.trim(), kind: form.kind.value, peer: form.peer.value.trim(),
  });
  $("#explanation").hidden = false;
  try {
    const decision = await api("GET", "/api/v1/explain?" + query);
    $("#verdict").textContent = (decision.allowed ? "Allowed" : "Refused") + (decision.class ? " (" + decision.class + ")" : "");
    $("#verdict").className = decision.allowed ? "allowed" : "refused";
    $("#explain-steps").textContent = decision.steps.join("\n");
  } catch (error) {
    $("#verdict").textContent = error.message;
    $("#verdict").className = "muted";
    $("#explain-steps").textContent = "";
  }
}

async function changeFederation(action) {
  const domain = $("#federation-form").domain.value.trim();
  if (!domain) return;
  const where = { allow: "allowed/", block: "blocked/", remove: "" }[action];
  const said = { allow: " is allowed", block: " is blocked", remove: " is off both lists" }[action];
  try {
    await api(action === "remove" ? "DELETE" : "PUT", "/api/v1/federation/" + where + encodeURIComponent(domain));
    $("#federation-result").textContent = domain + said;
    refresh();
  } catch (error) {
    $("#federation-result").textContent = error.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    start($("#token").value.trim());
  });
  $("#presence-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setPresence(false);
  });
  $("#presence-form button[name=clear]").addEventListener("click", () => setPresence(true));
  $("#federation-form").addEventListener("submit", (event) => {
    event.preventDefault();
    changeFederation("allow");
  });
  $("#federation-form button[name=block]").addEventListener("click", () => changeFederation("block"));
  $("#federation-form button[name=remove]").addEventListener("click", () => changeFederation("remove"));
  $("#explain-form").addEventListener("submit", (event) => {
    event.preventDefault();
    explain();
  });
  $("#endpoints").addEventListener("click", (event) => {
    const link = event.target.closest("[data-watchers]");
    if (!link) return;
    event.preventDefault();
    showWatchers(link.dataset.watchers);
  });
  // A token in the address (#token=...) is taken once and removed from it.
  const fromAddress = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromAddress) history.replaceState(null, "", location.pathname);
  const saved = fromAddress || sessionStorage.getItem("porchlight-token");
  if (saved) start(saved); else showLogin();
});
