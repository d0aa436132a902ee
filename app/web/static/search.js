/* The search page: text queries (GET /api/search, with filters and paging, kept in the URL so
   results can be bookmarked and Back works) and image queries (POST /api/search/image; the image
   comes from a drop, a paste, the file picker, or ?figure=ID for "search with this image").
   The facet sidebar shows the API's counts (facets=...) for figure type, panels, year, journal and
   license; ticking a type or clicking a value filters, and the choice goes into the URL
   (type=ct&type=mri&multipanel=false&license=...) so a refined search can be shared. */
"use strict";

(function () {
  const MAX_DEPTH = 1000; // the API refuses offset + k > 1000
  const TEXT_FACETS = "type,multipanel,year,journal,license";
  const IMAGE_FACETS = "type,multipanel"; // the sidebar's year, journal and license are for text searches
  const $ = function (id) { return document.getElementById(id); };

  const form = $("search-form");
  const qInput = $("q");
  const fileInput = $("image-file");
  const dropZone = $("drop-zone");
  const modeSet = $("image-mode");
  const filterSet = $("filters");
  const results = $("results");
  const statusNode = $("status");
  const errorNode = $("error");
  const pager = $("pager");
  const emptyState = $("empty-state");
  const intro = $("intro");
  const facetBox = $("facets");

  const state = {
    q: "",
    image: null,       // Blob of the query image
    imageName: "",
    figure: null,      // figure id the image came from (search with this image)
    offset: 0,
    types: new Set(),  // figure types ticked in the sidebar
    singlePanel: false, // multipanel=false
    license: "",
  };
  let previewUrl = null;
  let inflight = null;

  function k() { return parseInt($("per-page").value, 10) || 24; }
  function mode() { return form.querySelector("input[name=mode]:checked").value; }

  function filters() {
    const out = {};
    const yf = $("year_from").value.trim();
    const yt = $("year_to").value.trim();
    const journal = $("journal").value.trim();
    if (/^\d{4}$/.test(yf)) out.year_from = yf;
    if (/^\d{4}$/.test(yt)) out.year_to = yt;
    if (journal) out.journal = journal;
    if (state.license) out.license = state.license;
    return out;
  }

  /* The sidebar's figure filters as [name, value] pairs (type repeats). */
  function figureFilters() {
    const out = Array.from(state.types).sort().map(function (t) { return ["type", t]; });
    if (state.singlePanel) out.push(["multipanel", "false"]);
    return out;
  }

  function anyFilter() {
    return Object.keys(filters()).length > 0 || figureFilters().length > 0;
  }

  function setStatus(text) { statusNode.textContent = text; }

  /* Put the page's state into the address bar (text queries and figure-image queries). */
  function syncUrl(push) {
    const params = new URLSearchParams();
    if (state.image && state.figure) {
      params.set("figure", state.figure);
      params.set("mode", mode());
      figureFilters().forEach(function ([name, value]) { params.append(name, value); });
    } else if (state.q) {
      params.set("q", state.q);
      Object.entries(filters()).forEach(function ([name, value]) { params.set(name, value); });
      figureFilters().forEach(function ([name, value]) { params.append(name, value); });
    }
    if (state.offset) params.set("offset", String(state.offset));
    if (k() !== 24) params.set("k", String(k()));
    const url = "/" + (params.toString() ? "?" + params.toString() : "");
    if (url !== window.location.pathname + window.location.search) {
      (push ? history.pushState : history.replaceState).call(history, null, "", url);
    }
  }

  function setImage(blob, name, figureId) {
    state.image = blob;
    state.imageName = name || "pasted image";
    state.figure = figureId || null;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = blob ? URL.createObjectURL(blob) : null;
    $("query-image").hidden = !blob;
    if (blob) {
      $("query-image-preview").src = previewUrl;
      $("query-image-name").textContent = figureId ? "Figure " + figureId + " (from its page)" : state.imageName;
      qInput.value = "";
      state.q = "";
    } else {
      $("query-image-preview").removeAttribute("src");
      fileInput.value = "";
    }
    modeSet.disabled = !blob;
    filterSet.disabled = !!blob;
    $("filters-hint").textContent = blob ? "(not available for image searches)" : "(text searches)";
  }

  function clearResults() {
    results.replaceChildren();
    pager.hidden = true;
    facetBox.hidden = true;
  }

  function countText(n) { return n === undefined ? "" : "(" + n + ")"; }

  /* A clickable facet value (year, journal, license): pressed when it is the current filter. */
  function valueButton(facet, value, count, pressed) {
    const button = BS.el("button", { type: "button", class: "facet-value", "aria-pressed": pressed ? "true" : "false",
                                     dataset: { facet: facet, value: String(value) } },
                         [String(value) + " ", BS.el("span", { class: "count", text: countText(count) })]);
    return BS.el("li", {}, [button]);
  }

  function currentValue(facet) {
    if (facet === "year") {
      const yf = $("year_from").value.trim();
      return yf && yf === $("year_to").value.trim() ? yf : "";
    }
    if (facet === "journal") return $("journal").value.trim();
    return state.license;
  }

  /* Fill the sidebar from a search answer's facets (absent: hide it). */
  function renderFacets(body) {
    const facets = body.facets;
    if (!facets || !(body.results || []).length && !anyFilter()) { facetBox.hidden = true; return; }
    facetBox.hidden = false;
    $("facet-candidates").textContent = String(body.facet_candidates || 0);
    const types = {};
    (facets.type || []).forEach(function (f) { types[f.value] = f.count; });
    facetBox.querySelectorAll(".facet-group").forEach(function (group) {
      let total = 0;
      let shown = 0;
      group.querySelectorAll("li[data-type]").forEach(function (li) {
        const kind = li.dataset.type;
        const count = types[kind] || 0;
        const box = li.querySelector("input");
        box.checked = state.types.has(kind);
        li.querySelector(".count").textContent = countText(count);
        li.hidden = !count && !box.checked;
        total += count;
        if (!li.hidden) shown += 1;
      });
      group.querySelector("[data-group-count]").textContent = countText(total);
      group.hidden = shown === 0;
    });
    const panels = {};
    (facets.multipanel || []).forEach(function (f) { panels[String(f.value)] = f.count; });
    $("single-panel").checked = state.singlePanel;
    $("single-count").textContent = countText(panels["false"] || 0);
    ["year", "journal", "license"].forEach(function (facet) {
      const section = $("facet-" + facet);
      const values = facets[facet];
      section.hidden = !values;
      if (!values) return;
      const current = currentValue(facet);
      const items = values.slice();
      if (facet === "year") items.sort(function (a, b) { return b.value - a.value; });
      if (current && !items.some(function (f) { return String(f.value).toLowerCase() === current.toLowerCase(); })) {
        items.unshift({ value: current, count: 0 });
      }
      section.querySelector("ul").replaceChildren.apply(section.querySelector("ul"), items.map(function (f) {
        return valueButton(facet, f.value, f.count, String(f.value).toLowerCase() === current.toLowerCase());
      }));
      section.hidden = items.length === 0;
    });
  }

  function renderPage(body, captionFirst) {
    const hits = body.results || [];
    const terms = state.q ? BS.queryTerms(state.q) : [];
    if (body.indexed === 0) {
      clearResults();
      emptyState.hidden = false;
      intro.hidden = true;
      setStatus("Nothing is indexed yet.");
      return;
    }
    emptyState.hidden = true;
    intro.hidden = true;
    results.replaceChildren.apply(results, hits.map(function (hit) {
      return BS.figureCard(hit, { terms: terms, captionFirst: captionFirst });
    }));
    results.classList.toggle("caption-results", !!captionFirst);
    const what = state.image ? (captionFirst ? "captions matching the image" : "figures similar to the image")
                             : "figures for “" + state.q + "”";
    renderFacets(body);
    if (!hits.length) {
      setStatus(state.offset ? "No more results." : "No " + what + ". " +
        (anyFilter() ? "Try clearing the filters." : "Try other words."));
    } else {
      const first = state.offset + 1;
      const last = state.offset + hits.length;
      setStatus("Showing " + first + "–" + last + " of the best " + what + ".");
    }
    const more = hits.length === k() && state.offset + 2 * k() <= MAX_DEPTH;
    pager.hidden = !hits.length && !state.offset;
    $("prev-page").disabled = state.offset === 0;
    $("next-page").disabled = !more;
    $("page-info").textContent = "Page " + (Math.floor(state.offset / k()) + 1);
  }

  async function run(push) {
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    BS.showError(errorNode, "");
    results.setAttribute("aria-busy", "true");
    setStatus("Searching…");
    syncUrl(push);
    try {
      let body;
      if (state.image) {
        const data = new FormData();
        data.append("file", state.image, state.imageName || "query.png");
        data.append("k", String(k()));
        data.append("offset", String(state.offset));
        data.append("mode", mode());
        data.append("facets", IMAGE_FACETS);
        figureFilters().forEach(function ([name, value]) { data.append(name, value); });
        body = await BS.api("/api/search/image", { method: "POST", body: data, signal: controller.signal });
        renderPage(body, mode() === "text");
      } else if (state.q) {
        const params = new URLSearchParams(Object.assign({ q: state.q, k: String(k()), offset: String(state.offset),
                                                           facets: TEXT_FACETS }, filters()));
        figureFilters().forEach(function ([name, value]) { params.append(name, value); });
        body = await BS.api("/api/search?" + params.toString(), { signal: controller.signal });
        renderPage(body, false);
      } else {
        clearResults();
        setStatus("");
      }
    } catch (e) {
      if (e && e.name === "AbortError") return;
      clearResults();
      setStatus("");
      const message = e.status === 503 ? "The search service is not ready yet (" + e.message + ")." : e.message;
      BS.showError(errorNode, message || "The search failed.");
    } finally {
      if (inflight === controller) {
        inflight = null;
        results.removeAttribute("aria-busy");
      }
    }
  }

  function imageFrom(list) {
    for (const item of Array.from(list || [])) {
      const file = item.getAsFile ? (item.kind === "file" ? item.getAsFile() : null) : item;
      if (file && /^image\//.test(file.type)) return file;
    }
    return null;
  }

  function useImage(file) {
    if (!file) {
      BS.showError(errorNode, "That is not an image. Use a JPEG, PNG, GIF, TIFF, BMP or WebP file.");
      return;
    }
    setImage(file, file.name || "pasted image", null);
    state.offset = 0;
    run(true);
  }

  // --- events --------------------------------------------------------------------------------------
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const text = qInput.value.trim();
    if (!text && !state.image) {
      BS.showError(errorNode, "Type what the figure shows, or give an image.");
      qInput.focus();
      return;
    }
    if (text) {
      setImage(null);
      state.q = text;
    }
    state.offset = 0;
    run(true);
  });

  document.querySelectorAll("button.example").forEach(function (button) {
    button.addEventListener("click", function () {
      qInput.value = button.dataset.query;
      form.requestSubmit();
    });
  });

  $("pick-image").addEventListener("click", function () { fileInput.click(); });
  fileInput.addEventListener("change", function () {
    if (fileInput.files && fileInput.files.length) useImage(imageFrom(fileInput.files));
  });
  $("clear-image").addEventListener("click", function () {
    setImage(null);
    clearResults();
    setStatus("Image cleared.");
    syncUrl(true);
    qInput.focus();
  });

  ["dragenter", "dragover"].forEach(function (name) {
    dropZone.addEventListener(name, function (event) {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  });
  ["dragleave", "dragend"].forEach(function (name) {
    dropZone.addEventListener(name, function () { dropZone.classList.remove("dragging"); });
  });
  dropZone.addEventListener("drop", function (event) {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    useImage(imageFrom(event.dataTransfer.files));
  });
  // A file dropped elsewhere on the page must not make the browser navigate away to it.
  window.addEventListener("dragover", function (event) { event.preventDefault(); });
  window.addEventListener("drop", function (event) {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) useImage(imageFrom(event.dataTransfer.files));
  });
  document.addEventListener("paste", function (event) {
    const file = imageFrom(event.clipboardData ? event.clipboardData.items : []);
    if (file) {
      event.preventDefault();
      useImage(file);
    }
  });

  modeSet.addEventListener("change", function () {
    if (state.image) { state.offset = 0; run(true); }
  });
  ["year_from", "year_to", "journal"].forEach(function (id) {
    $(id).addEventListener("change", function () {
      if (state.q) { state.offset = 0; run(true); }
    });
  });
  $("per-page").addEventListener("change", function () {
    state.offset = 0;
    if (state.q || state.image) run(true);
  });
  $("clear-filters").addEventListener("click", function () {
    ["year_from", "year_to", "journal"].forEach(function (id) { $(id).value = ""; });
    state.license = "";
    if (state.q) { state.offset = 0; run(true); }
  });

  // --- the facet sidebar ----------------------------------------------------------------------------
  function rerun() {
    if (state.q || state.image) { state.offset = 0; run(true); }
  }
  facetBox.addEventListener("change", function (event) {
    const box = event.target;
    if (box.name === "type") {
      if (box.checked) state.types.add(box.value);
      else state.types.delete(box.value);
      rerun();
    } else if (box.id === "single-panel") {
      state.singlePanel = box.checked;
      rerun();
    }
  });
  facetBox.addEventListener("click", function (event) {
    const button = event.target.closest("button.facet-value");
    if (!button) return;
    const facet = button.dataset.facet;
    const value = button.getAttribute("aria-pressed") === "true" ? "" : button.dataset.value;
    if (facet === "year") { $("year_from").value = value; $("year_to").value = value; }
    else if (facet === "journal") $("journal").value = value;
    else state.license = value;
    rerun();
  });
  $("clear-facets").addEventListener("click", function () {
    ["year_from", "year_to", "journal"].forEach(function (id) { $(id).value = ""; });
    state.license = "";
    state.types.clear();
    state.singlePanel = false;
    rerun();
  });
  $("prev-page").addEventListener("click", function () {
    state.offset = Math.max(0, state.offset - k());
    run(true).then(function () { $("main").focus(); });
  });
  $("next-page").addEventListener("click", function () {
    state.offset = state.offset + k();
    run(true).then(function () { $("main").focus(); });
  });

  /* Restore the state from the address bar (first load, Back / Forward). */
  async function fromUrl() {
    const params = new URLSearchParams(window.location.search);
    const perPage = params.get("k");
    if (perPage && $("per-page").querySelector("option[value='" + CSS.escape(perPage) + "']")) {
      $("per-page").value = perPage;
    }
    $("year_from").value = params.get("year_from") || "";
    $("year_to").value = params.get("year_to") || "";
    $("journal").value = params.get("journal") || "";
    state.license = params.get("license") || "";
    state.types = new Set();
    params.getAll("type").forEach(function (name) {  // a group name (type=radiology) ticks its types
      const value = name.trim().toLowerCase();
      const group = facetBox.querySelector(".facet-group[data-group='" + CSS.escape(value) + "']");
      if (group) group.querySelectorAll("li[data-type]").forEach(function (li) { state.types.add(li.dataset.type); });
      else state.types.add(value);
    });
    state.singlePanel = params.get("multipanel") === "false";
    state.offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
    const wanted = params.get("mode");
    if (wanted === "text" || wanted === "image") {
      form.querySelector("input[name=mode][value=" + wanted + "]").checked = true;
    }
    const figure = params.get("figure");
    if (figure && /^\d+$/.test(figure)) {
      if (state.figure !== figure) {
        setStatus("Loading the figure's image…");
        try {
          const response = await fetch("/api/figures/" + figure + "/image",
            { headers: BS.getKey() ? { "X-API-Key": BS.getKey() } : {} });
          if (!response.ok) throw new Error("figure " + figure + " has no image to search with");
          setImage(await response.blob(), "figure-" + figure + ".jpg", figure);
        } catch (e) {
          setStatus("");
          BS.showError(errorNode, "Could not load the image of figure " + figure + ": " + e.message);
          return;
        }
      }
      run(false);
      return;
    }
    setImage(null);
    state.q = (params.get("q") || "").trim();
    qInput.value = state.q;
    if (state.q) run(false);
    else { clearResults(); setStatus(""); }
  }

  window.addEventListener("popstate", fromUrl);
  fromUrl();
})();
