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
  window.sphereLive("fleet", (event, data) => {
    if (event === "fleet.counts") {
      for (const [status, value] of Object.entries(data)) setCount(status, value);
    } else if (event === "device.status") {
      updateRow(data);
    }
  }, (state) => { stateLabel.textContent = state; stateLabel.dataset.state = state; });
})();
