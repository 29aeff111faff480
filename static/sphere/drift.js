// Drift pages: a live event on the "drift" topic re-renders the page's live regions from the
// server (live.js), so the cards, badges and counts look exactly as on a fresh load and nothing
// is reloaded. The page lists the events it cares about in data-live-events, and with
// data-live-id only those about that one record.
(function () {
  const page = document.querySelector("[data-live-events]");
  if (!page) return;
  const wanted = new Set(page.dataset.liveEvents.split(" "));
  const onlyId = page.dataset.liveId;
  const refresh = window.sphereLiveRegions("drift");  // a burst (a population drift) costs one fetch

  window.sphereLive("drift", (event, data) => {
    if (!wanted.has(event)) return;
    if (onlyId && String(data.id) !== onlyId) return;
    refresh();
  }, window.sphereLiveState(["drift"], refresh)("drift"));
})();
