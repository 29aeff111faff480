// Shared by every live page: sockets that reconnect, the connection label, batched refreshes,
// live regions re-rendered from the server, and the flash that marks what changed.

// Subscribes to a live-event topic and reconnects with backoff when the connection drops.
window.sphereLive = function (topic, onEvent, onState) {
  let delay = 500;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/live/${topic}/`);
    socket.onopen = () => { delay = 500; onState("live"); };
    socket.onmessage = (message) => {
      const payload = JSON.parse(message.data);
      onEvent(payload.event, payload.data);
    };
    socket.onclose = () => {
      onState("reconnecting…");
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
  }
  connect();
};

// Restarts the element's flash animation (CSS class "flash").
window.sphereFlash = function (element) {
  element.classList.remove("flash");
  void element.offsetWidth;
  element.classList.add("flash");
};

// The page's #live-state label for its sockets: "live" once every topic's socket is open, else
// the first other state. Returns onState(topic), the callback sphereLive takes. Events sent while
// a socket was down are lost, so catchUp() runs when one comes back after having been live.
window.sphereLiveState = function (topics, catchUp) {
  const label = document.getElementById("live-state");
  const states = new Map();
  const wasLive = new Set();
  return (topic) => (state) => {
    states.set(topic, state);
    if (state === "live" && wasLive.has(topic) && catchUp) catchUp();
    if (state === "live") wasLive.add(topic);
    const all = [...states.values()];
    const shown = all.length === topics.length && all.every((s) => s === "live") ? "live" : all.find((s) => s !== "live") || "connecting…";
    if (label) {
      label.textContent = shown;
      label.dataset.state = shown;
    }
  };
};

// Returns schedule(): a burst of calls runs work (async) once, after waitMs; a call while it runs
// runs it once more afterwards, so the last event is never missed and two never overlap.
window.sphereBatched = function (work, waitMs, name) {
  let timer = null, running = false, again = false;
  function schedule() {
    if (running) { again = true; return; }
    if (!timer) timer = setTimeout(run, waitMs);
  }
  async function run() {
    timer = null;
    running = true;
    try {
      await work();
    } catch (error) {
      console.warn(`${name}: live refresh failed`, error);
    } finally {
      running = false;
      if (again) { again = false; schedule(); }
    }
  }
  return schedule;
};

// Returns schedule() for re-rendering the page's [data-live-region] elements from a fresh GET of
// the page: rows look exactly as on a fresh load (one template, one set of permission checks),
// nothing is reloaded, and each [data-row] whose content changed flashes.
window.sphereLiveRegions = function (name, waitMs = 150) {
  function swap(fresh) {
    for (const region of document.querySelectorAll("[data-live-region]")) {
      const replacement = fresh.querySelector(`[data-live-region="${region.dataset.liveRegion}"]`);
      if (!replacement) continue;
      const before = new Map([...region.querySelectorAll("[data-row]")].map((row) => [row.dataset.row, row.innerHTML]));
      const adopted = document.importNode(replacement, true);
      region.replaceWith(adopted);
      for (const row of adopted.querySelectorAll("[data-row]")) {
        if (before.get(row.dataset.row) !== row.innerHTML) window.sphereFlash(row);
      }
    }
  }
  return window.sphereBatched(async () => {
    const answer = await fetch(location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" });
    if (answer.ok && !answer.redirected) swap(new DOMParser().parseFromString(await answer.text(), "text/html"));
  }, waitMs, name);
};
