// Fleet page: status counts, group counts, device rows and the event feed follow live events
// without a page reload. The server lists the topics this user may join (data-live-topics); the
// page opens one socket per topic (live.js) and never asks for another.
(function () {
  const page = document.querySelector("[data-live-topics]");
  if (!page) return;
  const topics = page.dataset.liveTopics.split(" ").filter(Boolean);
  const urls = JSON.parse(document.getElementById("feed-urls").textContent);
  const feed = document.getElementById("feed");
  const FEED_MAX = 50;
  const names = new Map();  // device id -> name, from the rows shown and the events seen
  for (const row of document.querySelectorAll("tr[data-device]")) {
    names.set(row.dataset.device, row.querySelector("a").textContent);
  }

  // --- Connection state: "live" once every socket is open -------------------------------------
  const onState = window.sphereLiveState(topics);
  const flash = window.sphereFlash;

  // --- Counts, groups and device rows ---------------------------------------------------------
  function setCount(status, value) {
    const cell = document.querySelector(`[data-count="${status}"]`);
    if (cell) cell.textContent = value;
  }

  function bumpGroup(group, status, by) {
    const row = document.querySelector(`#group-rows tr[data-group="${CSS.escape(group || "")}"]`);
    if (!row) return;
    for (const key of [status, "total"]) {
      const cell = row.querySelector(`[data-group-count="${key}"]`);
      if (cell) cell.textContent = Math.max(0, Number(cell.textContent) + by);
    }
    flash(row);
  }

  function updateRow(device, highlight) {
    const row = document.querySelector(`tr[data-device="${device.id}"]`);
    if (!row) return;
    const badge = row.querySelector('[data-field="status"]');
    badge.textContent = device.status;
    badge.className = `badge status-${device.status}`;
    for (const field of ["client_version", "model_version"]) {
      const cell = row.querySelector(`[data-field="${field}"]`);
      if (cell && device[field]) cell.textContent = device[field];
    }
    const seen = row.querySelector('[data-field="last_seen_at"]');
    if (seen && device.last_seen_at) seen.textContent = device.last_seen_at.replace("T", " ").slice(0, 19);
    if (highlight) flash(row);
  }

  function cell(text, field) {
    const td = document.createElement("td");
    td.textContent = text;
    if (field) td.dataset.field = field;
    return td;
  }

  function link(href, text, className) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    if (className) a.className = className;
    return a;
  }

  function addRow(device) {
    // Only the unfiltered first page shows new devices at once; other pages pick them up on reload.
    const rows = document.getElementById("device-rows");
    const params = new URLSearchParams(location.search);
    if (params.get("status") || (params.get("page") || "1") !== "1") return;
    if (document.querySelector(`tr[data-device="${device.id}"]`)) return;
    rows.querySelector("tr.empty")?.remove();
    const row = document.createElement("tr");
    row.dataset.device = device.id;
    const name = document.createElement("td");
    name.appendChild(link(urls.device.replace("{id}", device.id), device.name));
    const status = document.createElement("td");
    const badge = document.createElement("span");
    badge.dataset.field = "status";
    badge.className = `badge status-${device.status}`;
    badge.textContent = device.status;
    status.appendChild(badge);
    const edit = document.createElement("td");
    edit.appendChild(link(urls.device_admin.replace("{id}", device.id), "edit", "admin-link"));
    row.append(name, status, cell(device.group || "—"), cell("never", "last_seen_at"),
      cell(device.client_version || "—", "client_version"), cell(device.model_version || "—", "model_version"), edit);
    rows.prepend(row);
  }

  // --- The feed -------------------------------------------------------------------------------
  function clock(date) {
    const two = (n) => String(n).padStart(2, "0");
    return `${two(date.getUTCMonth() + 1)}-${two(date.getUTCDate())} ${two(date.getUTCHours())}:${two(date.getUTCMinutes())}:${two(date.getUTCSeconds())}`;
  }

  function deviceName(id) {
    return names.get(id) || `device ${String(id).slice(0, 8)}`;
  }

  // Puts an item at the top; an item with the same key (a training job's progress) is replaced.
  function addItem(item) {
    const now = new Date();
    const li = document.createElement("li");
    li.className = `feed-item feed-${item.kind}`;
    li.dataset.feed = item.key;
    li.dataset.arrived = String(Date.now());
    li.appendChild(link(urls[item.kind].replace("{id}", item.id), item.title, "title"));
    li.append(" ");
    const badge = document.createElement("span");
    badge.className = `badge ${item.badgeClass}`;
    badge.dataset.field = "badge";
    badge.textContent = item.badge;
    li.appendChild(badge);
    const meta = document.createElement("div");
    meta.className = "meta";
    const detail = document.createElement("span");
    detail.className = "detail";
    detail.textContent = item.detail;
    const time = document.createElement("time");
    time.dateTime = now.toISOString();
    time.textContent = clock(now);
    meta.append(detail, " · ", time);
    li.appendChild(meta);
    feed.querySelector(`[data-feed="${CSS.escape(item.key)}"]`)?.remove();
    feed.querySelector(".feed-empty")?.remove();
    feed.prepend(li);
    flash(li);
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  }

  function setBadge(key, text, className) {
    const badge = feed.querySelector(`[data-feed="${CSS.escape(key)}"] [data-field="badge"]`);
    if (!badge) return;
    badge.textContent = text;
    badge.className = `badge ${className}`;
  }

  const handlers = {
    fleet(event, data) {
      if (data && data.id && data.name) names.set(data.id, data.name);
      if (event === "fleet.counts") {
        for (const [status, value] of Object.entries(data)) setCount(status, value);
      } else if (event === "device.status") {
        updateRow(data, true);
        bumpGroup(data.group, data.previous, -1);
        bumpGroup(data.group, data.status, +1);
        addItem({ kind: "device", id: data.id, key: `device-${data.id}-${Date.now()}`, title: `${data.name} is ${data.status}`,
          detail: `was ${data.previous}${data.group ? ` · ${data.group}` : ""}`, badge: data.status, badgeClass: `status-${data.status}` });
      } else if (event === "device.heartbeat") {
        updateRow(data, false);
      } else if (event === "device.enrolled") {
        addRow(data);
        bumpGroup(data.group, data.status, +1);
        addItem({ kind: "device", id: data.id, key: `device-${data.id}-enrolled`, title: `${data.name} enrolled`,
          detail: data.group || "no group", badge: data.status, badgeClass: `status-${data.status}` });
      }
    },
    drift(event, data) {
      if (event === "drift.event") {
        addItem({ kind: "drift", id: data.id, key: `drift-${data.id}`, title: `Drift: ${data.detector || "drift"}`,
          detail: `${deviceName(data.device)} · model ${data.model_version || "—"}`, badge: data.status, badgeClass: `drift-${data.status}` });
      } else if (event === "drift.verdict") {
        setBadge(`drift-${data.id}`, data.status, `drift-${data.status}`);
      }
    },
    packages(event, data) {
      if (event !== "package.processed" && event !== "package.failed") return;
      addItem({ kind: "package", id: data.id, key: `package-${data.id}`, title: `Package ${data.kind} ${data.status}`,
        detail: deviceName(data.device) + (data.error ? ` · ${data.error.slice(0, 120)}` : ""), badge: data.status, badgeClass: `package-${data.status}` });
    },
    registry(event, data) {
      if (event === "training.job") {
        const key = `job-${data.id}`;
        const shown = feed.querySelector(`[data-feed="${key}"] [data-field="badge"]`);
        const item = { kind: "job", id: data.id, key, title: `Training job ${data.id} ${data.status}`,
          detail: `${data.family} · ${data.trigger}${data.stage ? ` · ${data.stage}` : ""}${data.version ? ` → ${data.version}` : ""}`,
          badge: data.status, badgeClass: `job-${data.status}` };
        // Progress of a running job updates its line in place; a new status is news.
        if (shown && shown.textContent === data.status) {
          shown.closest("li").querySelector(".detail").textContent = item.detail;
        } else {
          addItem(item);
        }
      } else if (event === "rollout.updated") {
        addItem({ kind: "rollout", id: data.id, key: `rollout-${data.id}-${Date.now()}`, title: `Rollout ${data.name}: ${data.action}`,
          detail: `${data.version} · phase ${data.phase + 1} · ${data.status}`, badge: data.status, badgeClass: `rollout-${data.status}` });
      }
    },
  };

  for (const topic of topics) {
    if (handlers[topic]) window.sphereLive(topic, handlers[topic], onState(topic));
  }

  // The labeling queue's counts, when the page shows them (the user may watch the topic).
  if (document.getElementById("labeling-counts")) {
    window.sphereLive("labeling", (event, data) => {
      if (event !== "labeling.counts") return;
      for (const [status, value] of Object.entries(data)) {
        const cell = document.querySelector(`[data-queue="${status}"]`);
        if (cell) cell.textContent = value;
      }
    }, () => {});
  }
})();
