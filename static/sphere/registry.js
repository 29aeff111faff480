// Registry pages: live events on the "registry" topic. A training job's progress moves its bar
// in place (a training job sends several a second); anything else (a job changing status, a new
// job, an alias move, a rollout decision) re-renders the page's live regions from the server, as
// static/sphere/drift.js does (live.js), so rows look exactly as on a fresh load and nothing is reloaded.
// The page lists the events it cares about in data-live-events; data-live-id keeps only those
// about one record, data-live-family those about one model family.
(function () {
  const page = document.querySelector("[data-live-events]");
  if (!page) return;
  const wanted = new Set(page.dataset.liveEvents.split(" "));
  const onlyId = page.dataset.liveId;
  const onlyFamily = page.dataset.liveFamily;
  const statusSeen = new Map();  // job id -> last status heard, for jobs this page does not show
  const schedule = window.sphereLiveRegions("registry");  // a burst of events costs one fetch

  function setText(holder, field, text) {
    const element = holder.querySelector(`[data-field="${field}"]`);
    if (element) element.textContent = text;
  }

  // Moves the bar of every element showing the job; true when nothing but its progress changed.
  function moveProgress(job) {
    const holders = document.querySelectorAll(`[data-job="${job.id}"]`);
    if (!holders.length) return false;
    const percent = Math.round(job.progress * 100);
    let onlyProgress = true;
    for (const holder of holders) {
      const bar = holder.querySelector('[data-field="progress"]');
      if (bar) bar.value = percent;
      setText(holder, "percent", `${percent}%`);
      setText(holder, "stage", job.stage || "—");
      if (holder.dataset.status !== job.status) onlyProgress = false;
    }
    return onlyProgress;
  }

  function onJob(job) {
    if (moveProgress(job)) return;
    if (!document.querySelector(`[data-job="${job.id}"]`)) {
      // A job this page does not show: a job list may need it (new, or now in the filtered
      // status), once per status; other pages care only about a job that produced a version.
      const listsJobs = document.querySelector('[data-live-region="jobs"]') !== null;
      if (!listsJobs && !job.version) return;
      if (statusSeen.get(job.id) === job.status) return;
      statusSeen.set(job.id, job.status);
    }
    schedule();
  }

  window.sphereLive("registry", (event, data) => {
    if (!wanted.has(event)) return;
    if (onlyId && String(data.id) !== onlyId) return;
    if (onlyFamily && data.family !== onlyFamily) return;
    if (event === "training.job") onJob(data);
    else schedule();
  }, window.sphereLiveState(["registry"], schedule)("registry"));
})();
