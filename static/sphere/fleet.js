// Fleet page: status counts and device rows follow live events without a page reload.
(function () {
  const stateLabel = document.getElementById("live-state");
  function setCount(status, value) {
    const cell = document.querySelector(`[data-count="${status}"]`);
    if (cell) cell.textContent = value;
  }
  function updateRow(device) {
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
    row.classList.remove("flash");
    void row.offsetWidth;
    row.classList.add("flash");
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
    const cells = [device.name, device.status, device.group || "—", "never", device.client_version || "—", device.model_version || "—"];
    for (const [index, value] of cells.entries()) {
      const cell = document.createElement("td");
      if (index === 0) {
        const link = document.createElement("a");
        link.href = `/admin/devices/device/${device.id}/change/`;
        link.textContent = value;
        cell.appendChild(link);
      } else if (index === 1) {
        const badge = document.createElement("span");
        badge.dataset.field = "status";
        badge.className = `badge status-${value}`;
        badge.textContent = value;
        cell.appendChild(badge);
      } else {
        cell.textContent = value;
        if (index === 3) cell.dataset.field = "last_seen_at";
        if (index === 4) cell.dataset.field = "client_version";
        if (index === 5) cell.dataset.field = "model_version";
      }
      row.appendChild(cell);
    }
    rows.prepend(row);
  }
  window.sphereLive("fleet", (event, data) => {
    if (event === "fleet.counts") {
      for (const [status, value] of Object.entries(data)) setCount(status, value);
    } else if (event === "device.status") {
      updateRow(data);
    } else if (event === "device.enrolled") {
      addRow(data);
    }
  }, (state) => { stateLabel.textContent = state; stateLabel.dataset.state = state; });
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
