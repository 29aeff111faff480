// Labeling pages: keyboard shortcuts (any element with data-key), the task's lease kept alive
// while the labeler is at the page, and queue counts that follow the "labeling" live topic.
(function () {
  const page = document.querySelector("[data-labeling-page]");
  if (!page) return;

  // --- One answer per page ------------------------------------------------------------------
  // A fast double press would otherwise answer the next task unseen: after the first submit
  // the page ignores the rest until the next page arrives.
  let answering = false;
  document.addEventListener("submit", (event) => {
    if (answering) event.preventDefault();
    answering = true;
  });
  window.addEventListener("pageshow", () => { answering = false; });  // back from the cache

  // --- Keyboard -----------------------------------------------------------------------------
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (event.target.closest("input, textarea, select")) {  // typing a note; Escape leaves it
      if (event.key === "Escape") event.target.blur();
      return;
    }
    const target = document.querySelector(`[data-key="${CSS.escape(event.key)}"]`);
    if (!target) return;
    event.preventDefault();
    if (target.matches("input, textarea")) {
      target.focus();
      return;
    }
    target.classList.add("pressed");
    target.click();
  });

  // --- Lease --------------------------------------------------------------------------------
  const touchUrl = page.dataset.touchUrl;
  if (touchUrl) {
    const leaseMs = Number(page.dataset.leaseSeconds || 300) * 1000;
    // A tab left open and forgotten must not hold its task for good: only touch while someone
    // has used the page recently.
    const IDLE_MS = 10 * 60 * 1000;
    let lastActive = Date.now();
    for (const name of ["keydown", "pointermove", "pointerdown", "wheel", "focus"]) {
      window.addEventListener(name, () => { lastActive = Date.now(); }, { passive: true });
    }
    setInterval(() => {
      if (Date.now() - lastActive > IDLE_MS) return;
      fetch(touchUrl, { method: "POST", headers: { "X-CSRFToken": csrfToken() }, credentials: "same-origin" })
        .catch((error) => console.warn("labeling: lease not extended", error));
    }, Math.max(leaseMs / 3, 5000));
  }

  function csrfToken() {
    const field = document.querySelector("[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  // --- Images -------------------------------------------------------------------------------
  // Small images (8×8 digits) are scaled up with sharp pixels (the CSS default); a large photo
  // scaled down looks better smoothed.
  for (const image of document.querySelectorAll(".task-image img, .review-image img")) {
    const smoothIfLarge = () => image.classList.toggle("smooth", image.naturalWidth > image.clientWidth);
    if (image.complete) smoothIfLarge(); else image.addEventListener("load", smoothIfLarge);
  }

  // --- Live counts --------------------------------------------------------------------------
  const countsUrl = page.dataset.countsUrl;
  if (!countsUrl || !window.sphereLive) return;
  // A burst of labels costs one fetch a second, not one per label.
  const schedule = window.sphereBatched(async () => {
    const answer = await fetch(countsUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (answer.ok && !answer.redirected) show(await answer.json());
  }, 1000, "labeling");

  function show(counts) {
    for (const [name, value] of Object.entries(counts)) {
      const cell = document.querySelector(`[data-count="${name}"]`);
      if (!cell || cell.textContent === value) continue;
      cell.textContent = value;
      window.sphereFlash(cell.closest(".count"));
    }
    const waiting = document.querySelector("[data-when-pending]");
    if (waiting) waiting.hidden = counts.pending === "0";
  }

  window.sphereLive("labeling", (event) => {
    if (event === "labeling.counts") schedule();
  }, window.sphereLiveState(["labeling"], schedule)("labeling"));
})();
