// Drift pages: a live event on the "drift" topic re-renders the page's live regions from the
// server, so the cards, badges and counts look exactly as on a fresh load (one template, one
// set of permission checks) and nothing is reloaded. The page lists the events it cares about
// in data-live-events, and with data-live-id only those about that one record.
(function () {
  const page = document.querySelector("[data-live-events]");
  const stateLabel = document.getElementById("live-state");
  if (!page) return;
  const wanted = new Set(page.dataset.liveEvents.split(" "));
  const onlyId = page.dataset.liveId;
  const BATCH_MS = 150;  // a burst of events (a population drift) costs one fetch, not one each
  let timer = null, running = false, again = false, wasLive = false;

  function schedule() {
    if (running) { again = true; return; }
    clearTimeout(timer);
    timer = setTimeout(refresh, BATCH_MS);
  }

  async function refresh() {
    running = true;
    try {
      const answer = await fetch(location.href, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      if (answer.ok && !answer.redirected) swap(new DOMParser().parseFromString(await answer.text(), "text/html"));
    } catch (error) {
      console.warn("drift: live refresh failed", error);
    } finally {
      running = false;
      if (again) { again = false; schedule(); }
    }
  }

  function swap(fresh) {
    for (const region of document.querySelectorAll("[data-live-region]")) {
      const replacement = fresh.querySelector(`[data-live-region="${region.dataset.liveRegion}"]`);
      if (!replacement) continue;
      const before = new Map([...region.querySelectorAll("[data-row]")].map((row) => [row.dataset.row, row.innerHTML]));
      const adopted = document.importNode(replacement, true);
      region.replaceWith(adopted);
      for (const row of adopted.querySelectorAll("[data-row]")) {
        if (before.get(row.dataset.row) !== row.innerHTML) flash(row);
      }
    }
  }

  function flash(row) {
    row.classList.remove("flash");
    void row.offsetWidth;
    row.classList.add("flash");
  }

  window.sphereLive("drift", (event, data) => {
    if (!wanted.has(event)) return;
    if (onlyId && String(data.id) !== onlyId) return;
    schedule();
  }, (state) => {
    // Events sent while the socket was down are lost: catch up once it is back.
    if (state === "live" && wasLive) schedule();
    if (state === "live") wasLive = true;
    stateLabel.textContent = state;
    stateLabel.dataset.state = state;
  });
})();
