/* The figure page: GET /api/figures/{id} (image, caption, type and panels, article), a zoomable image, similar
   figures (GET /api/figures/{id}/similar) and "search with this image" (/?figure={id}). */
"use strict";

(function () {
  const $ = function (id) { return document.getElementById(id); };
  const root = $("figure");
  const figureId = root.dataset.figureId;
  const image = $("figure-image");
  const frame = $("zoom-frame");
  const ZOOMS = [1, 1.5, 2, 3, 4, 6];  // multiples of the fitted width; index -1 = fit
  let zoom = -1;

  function applyZoom() {
    if (zoom < 0) {
      image.style.width = "";
      image.classList.remove("zoomed");
      $("zoom-level").textContent = "Fit";
    } else {
      const fitted = Math.min(frame.clientWidth, image.naturalWidth || frame.clientWidth);
      image.style.width = Math.round(fitted * ZOOMS[zoom]) + "px";
      image.classList.add("zoomed");
      $("zoom-level").textContent = Math.round(ZOOMS[zoom] * 100) + "%";
    }
    $("zoom-out").disabled = zoom < 0;
    $("zoom-in").disabled = zoom >= ZOOMS.length - 1;
  }

  function zoomBy(step) {
    zoom = Math.max(-1, Math.min(ZOOMS.length - 1, zoom + step));
    applyZoom();
  }

  $("zoom-in").addEventListener("click", function () { zoomBy(1); });
  $("zoom-out").addEventListener("click", function () { zoomBy(-1); });
  $("zoom-fit").addEventListener("click", function () { zoom = -1; applyZoom(); });
  image.addEventListener("click", function (event) {
    const rect = image.getBoundingClientRect();
    const fx = (event.clientX - rect.left) / rect.width;
    const fy = (event.clientY - rect.top) / rect.height;
    zoom = zoom < 0 ? 2 : -1;  // fit <-> 200 %, centred on the clicked point
    applyZoom();
    if (zoom >= 0) {
      frame.scrollLeft = fx * image.clientWidth - frame.clientWidth / 2;
      frame.scrollTop = fy * image.clientHeight - frame.clientHeight / 2;
    }
  });
  frame.addEventListener("keydown", function (event) {
    if (event.key === "+" || event.key === "=") { zoomBy(1); event.preventDefault(); }
    else if (event.key === "-" || event.key === "_") { zoomBy(-1); event.preventDefault(); }
    else if (event.key === "0") { zoom = -1; applyZoom(); event.preventDefault(); }
  });

  async function loadSimilar() {
    const status = $("similar-status");
    const list = $("similar");
    try {
      const body = await BS.api("/api/figures/" + figureId + "/similar?k=12");
      const hits = body.results || [];
      list.replaceChildren.apply(list, hits.map(function (hit) { return BS.figureCard(hit, {}); }));
      status.textContent = hits.length ? hits.length + " figures with similar images." : "No other figures are indexed yet.";
    } catch (e) {
      list.replaceChildren();
      if (e.status === 409 || e.status === 404) status.textContent = "This figure's image is not indexed yet, so similar figures cannot be found.";
      else status.textContent = "Similar figures could not be loaded: " + e.message;
    }
  }

  async function load() {
    let fig;
    try {
      fig = await BS.api("/api/figures/" + figureId);
    } catch (e) {
      root.removeAttribute("aria-busy");
      $("figure-title").textContent = e.status === 404 ? "Figure " + figureId + " was not found" : "Figure " + figureId;
      BS.showError($("error"), e.status === 404 ? "It may have been removed, or the link is wrong." : e.message);
      $("similar-status").textContent = "";
      return;
    }
    const article = fig.article || {};
    const label = fig.label || "Figure";
    document.title = label + (article.title ? " · " + article.title : "") + " · BiomedSearch";
    $("figure-title").textContent = label + (article.title ? " — " + article.title : "");
    // the caption usually repeats its title as its first sentence: show the title apart only when it does not
    const separateTitle = fig.caption_title && (fig.caption || "").indexOf(fig.caption_title) !== 0;
    $("caption-title").textContent = separateTitle ? fig.caption_title : "";
    $("caption-title").hidden = !separateTitle;
    $("caption").textContent = fig.caption || "(no caption)";
    BS.figureTypeMeta($("figure-meta"), fig);
    BS.articleMeta($("article-meta"), article);
    if (article.id) {
      $("article-link").href = "/articles/" + article.id;
      $("article-link").hidden = false;
    }
    if (fig.has_image && fig.image_url) {
      image.alt = label + ": " + BS.snippet(fig.caption || "", [], 300);
      image.src = fig.image_url;
      image.hidden = false;
      if (fig.width && fig.height) {
        image.width = fig.width;
        image.height = fig.height;
      }
      image.addEventListener("load", applyZoom, { once: true });
      $("full-image-link").href = fig.image_url;
      $("full-image-link").hidden = false;
      $("search-with-image").href = "/?figure=" + encodeURIComponent(fig.id);
      $("search-with-image").hidden = false;
      applyZoom();
      loadSimilar();
    } else {
      $("no-image").hidden = false;
      frame.removeAttribute("tabindex");
      document.querySelectorAll(".zoom-controls button").forEach(function (b) { b.disabled = true; });
      $("similar-status").textContent = "This figure has no image, so there are no similar figures to show.";
    }
    root.removeAttribute("aria-busy");
  }

  load();
})();
