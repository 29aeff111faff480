// Device page: its status, last seen time and latest numbers follow its heartbeats, and its new
// drift events appear at the top of the list, without a page reload. The server lists the
// topics this user may join (data-live-topics).
(function () {
  const page = document.querySelector(".device-page[data-live-topics]");
  if (!page) return;
  const deviceId = page.dataset.device;
  const topics = page.dataset.liveTopics.split(" ").filter(Boolean);
  const eventUrl = JSON.parse(document.getElementById("drift-event-url").textContent);

  const onState = window.sphereLiveState(topics);
  const flash = window.sphereFlash;

  function number(value) {
    return typeof value === "number" ? String(Number(value.toPrecision(3))) : "—";
  }

  function showDevice(data) {
    const badge = page.querySelector('h1 [data-field="status"]');
    badge.textContent = data.status;
    badge.className = `badge big status-${data.status}`;
    const seen = page.querySelector('[data-field="last_seen_at"]');
    if (data.last_seen_at) {
      seen.textContent = data.last_seen_at.replace("T", " ").slice(0, 19);
      flash(seen);
    }
    for (const field of ["client_version", "model_version"]) {
      if (data[field]) page.querySelector(`[data-field="${field}"]`).textContent = data[field];
    }
    for (const [field, value] of Object.entries(data.telemetry || {})) {
      const cell = page.querySelector(`[data-latest="${field}"]`);
      if (cell) cell.textContent = number(value);
    }
  }

  function cell(child) {
    const td = document.createElement("td");
    if (typeof child === "string") td.textContent = child; else td.appendChild(child);
    return td;
  }

  function addEvent(data) {
    const rows = document.getElementById("event-rows");
    const params = new URLSearchParams(location.search);
    if (!rows || (params.get("page") || "1") !== "1") return;  // older pages pick it up on reload
    if (rows.querySelector(`tr[data-event="${data.id}"]`)) return;
    rows.querySelector("tr.empty")?.remove();
    const row = document.createElement("tr");
    row.dataset.event = data.id;
    const link = document.createElement("a");
    link.href = eventUrl.replace("/0/", `/${data.id}/`);
    link.textContent = data.detector || "drift";
    const badge = document.createElement("span");
    badge.className = `badge drift-${data.status}`;
    badge.dataset.field = "status";
    badge.textContent = data.status;
    const detected = document.createElement("time");
    detected.dateTime = data.created;
    detected.textContent = String(data.created || "").replace("T", " ").slice(0, 19);
    const received = new Date().toISOString().replace("T", " ").slice(0, 19);
    row.append(cell(link), cell(badge), cell(data.model_version || "—"), cell(detected), cell(received));
    rows.prepend(row);
    flash(row);
  }

  const handlers = {
    fleet(event, data) {
      if ((event === "device.status" || event === "device.heartbeat") && data.id === deviceId) showDevice(data);
    },
    drift(event, data) {
      if (data.device !== deviceId) return;
      if (event === "drift.event") addEvent(data);
      if (event === "drift.verdict") {
        const badge = document.querySelector(`tr[data-event="${data.id}"] [data-field="status"]`);
        if (badge) {
          badge.textContent = data.status;
          badge.className = `badge drift-${data.status}`;
        }
      }
    },
  };
  for (const topic of topics) {
    if (handlers[topic]) window.sphereLive(topic, handlers[topic], onState(topic));
  }
})();
