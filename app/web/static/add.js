/* The add-articles page: POST /api/articles (a package upload with upload progress, or a JSON list
   of PMCIDs) with the API key, then GET /api/jobs/{id} until the job is done or failed (?job=ID in
   the address keeps following it across reloads), then links to the new articles' figures. */
"use strict";

(function () {
  const $ = function (id) { return document.getElementById(id); };
  const form = $("add-form");
  const keyInput = $("api-key");
  const fileInput = $("package");
  const errorNode = $("error");
  const POLL_MS = 700;
  const PMCID = /^(?:PMC)?(\d{1,12})(?:\.\d{1,4})?$/i;  // PMC123, or PMC123.2 for one version
  let polling = null;

  const COUNT_LABELS = {
    fetched: "Packages fetched",
    articles_added: "Articles added",
    articles_replaced: "Articles replaced",
    articles_unchanged: "Articles unchanged",
    figures: "Figures",
    images: "Images stored",
    skipped: "Items skipped",
    sources_refused: "Sources refused",
    embedded_images: "Images embedded",
    embedded_captions: "Captions embedded",
    image_vectors: "Image vectors in the index",
    caption_vectors: "Caption vectors in the index",
  };
  const STAGES = { fetch: "downloading packages", ingest: "reading the articles", embed: "encoding figures",
                   publish: "updating the search index", done: "done", start: "starting" };

  keyInput.value = BS.getKey();

  function source() { return form.querySelector("input[name=source]:checked").value; }
  form.querySelectorAll("input[name=source]").forEach(function (radio) {
    radio.addEventListener("change", function () {
      $("upload-panel").hidden = source() !== "upload";
      $("pmcids-panel").hidden = source() !== "pmcids";
    });
  });

  const drop = $("package-drop");
  ["dragenter", "dragover"].forEach(function (name) {
    drop.addEventListener(name, function (event) { event.preventDefault(); drop.classList.add("dragging"); });
  });
  ["dragleave", "dragend"].forEach(function (name) {
    drop.addEventListener(name, function () { drop.classList.remove("dragging"); });
  });
  drop.addEventListener("drop", function (event) {
    event.preventDefault();
    drop.classList.remove("dragging");
    if (event.dataTransfer.files.length) fileInput.files = event.dataTransfer.files;
  });
  window.addEventListener("dragover", function (event) { event.preventDefault(); });
  window.addEventListener("drop", function (event) { event.preventDefault(); });

  /* POST a multipart upload with XMLHttpRequest (fetch cannot report upload progress). */
  function upload(file, key) {
    return new Promise(function (resolve, reject) {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/articles");
      xhr.setRequestHeader("X-API-Key", key);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", function (event) {
        if (event.lengthComputable) {
          $("job-status").textContent = "Uploading " + file.name + ": " + Math.round(100 * event.loaded / event.total) + "%";
        }
      });
      xhr.addEventListener("load", function () {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { body = null; }
        if (xhr.status === 202 && body) resolve(body);
        else reject(new BS.ApiError(xhr.status, BS.errorMessage(xhr.status, body), body));
      });
      xhr.addEventListener("error", function () { reject(new BS.ApiError(0, "The service could not be reached.", null)); });
      const data = new FormData();
      data.append("file", file, file.name);
      xhr.send(data);
    });
  }

  function explain(e) {
    if (e.status === 401) return "The API key was not accepted. Check it and try again.";
    if (e.status === 403) return "This service does not accept new articles (no API key is configured on the server).";
    if (e.status === 413) return "The file is too large for this service. " + e.message;
    return e.message;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    BS.showError(errorNode, "");
    const key = keyInput.value.trim();
    if (!key) {
      BS.showError(errorNode, "Enter the API key.");
      keyInput.focus();
      return;
    }
    BS.setKey(key);
    let request;
    if (source() === "upload") {
      const file = fileInput.files && fileInput.files[0];
      if (!file) {
        BS.showError(errorNode, "Choose a package file (.tar.gz or .zip).");
        fileInput.focus();
        return;
      }
      request = function () { return upload(file, key); };
    } else {
      const raw = $("pmcids").value.split(/[\s,;]+/).filter(Boolean);
      const bad = raw.filter(function (id) { return !PMCID.test(id); });
      if (!raw.length || bad.length) {
        BS.showError(errorNode, raw.length ? "Not a PMCID: " + bad.slice(0, 3).join(", ") : "Enter at least one PMCID.");
        $("pmcids").focus();
        return;
      }
      if (raw.length > 100) {
        BS.showError(errorNode, "At most 100 PMCIDs at a time.");
        return;
      }
      request = function () {
        return BS.api("/api/articles", {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-API-Key": key },
          body: JSON.stringify({ pmcids: raw }),
        });
      };
    }
    $("add-submit").disabled = true;
    showJob(null);
    $("job-status").textContent = "Sending…";
    try {
      const accepted = await request();
      history.replaceState(null, "", "/add?job=" + accepted.job_id);
      follow(accepted.job_id);
    } catch (e) {
      $("job").hidden = true;
      BS.showError(errorNode, explain(e));
    } finally {
      $("add-submit").disabled = false;
    }
  });

  function showJob(id) {
    $("job").hidden = false;
    $("job-id").textContent = id ? String(id) : "";
    $("job-progress").value = 0;
    $("job-counts").replaceChildren();
    $("job-errors").replaceChildren();
    $("job-done").hidden = true;
  }

  function renderJob(job) {
    const pct = Math.round(100 * (job.progress || 0));
    $("job-progress").value = job.progress || 0;
    $("job-progress").textContent = pct + "%";
    const stage = STAGES[job.stage] || job.stage || "";
    let text;
    if (job.state === "queued") text = "Queued: waiting for the worker…";
    else if (job.state === "running") text = "Running: " + stage + " (" + pct + "%)";
    else if (job.state === "done") text = "Done (100%).";
    else text = "Failed" + (job.stage ? " while " + stage : "") + ".";
    $("job-status").textContent = text;
    $("job").dataset.state = job.state;

    const dl = $("job-counts");
    dl.replaceChildren();
    Object.keys(COUNT_LABELS).forEach(function (name) {
      if (job.counts && job.counts[name] !== undefined) {
        dl.appendChild(BS.el("dt", { text: COUNT_LABELS[name] }));
        dl.appendChild(BS.el("dd", { text: String(job.counts[name]) }));
      }
    });
    const errors = $("job-errors");
    errors.replaceChildren.apply(errors, (job.errors || []).slice(0, 20).map(function (err) {
      const where = [err.stage, err.source || err.pmcid || (err.figure_id ? "figure " + err.figure_id : "")]
        .filter(Boolean).join(", ");
      return BS.el("li", { text: (where ? where + ": " : "") + (err.message || JSON.stringify(err)) });
    }));
  }

  async function renderDone(job) {
    const ids = (job.counts && job.counts.article_ids) || [];
    const figures = (job.counts && job.counts.figures) || 0;
    $("job-summary").textContent = "Indexed " + ids.length + " article" + (ids.length === 1 ? "" : "s") +
      " with " + figures + " figure" + (figures === 1 ? "" : "s") + ". They can be searched now.";
    const links = $("job-links");
    links.replaceChildren();
    for (const id of ids.slice(0, 50)) {
      const item = BS.el("li", {}, [BS.el("a", { href: "/articles/" + id, text: "Article " + id + ": its figures" })]);
      links.appendChild(item);
      try {
        const art = await BS.api("/api/articles/" + id);
        item.firstChild.textContent = (art.title || "Article " + id) + " (" + art.figures.length + " figures)";
      } catch (e) { /* keep the plain link */ }
    }
    $("job-done").hidden = false;
  }

  function follow(id) {
    if (polling) clearTimeout(polling);
    showJob(id);
    async function tick() {
      let job;
      try {
        job = await BS.api("/api/jobs/" + id);
      } catch (e) {
        $("job-status").textContent = "Could not read job " + id + ": " + e.message;
        if (e.status !== 404) polling = setTimeout(tick, POLL_MS * 3);
        return;
      }
      renderJob(job);
      if (job.state === "done") {
        await renderDone(job);
        loadRecent();
      } else if (job.state === "failed") {
        loadRecent();
      } else {
        polling = setTimeout(tick, POLL_MS);
      }
    }
    tick();
  }

  async function loadRecent() {
    const table = $("recent");
    try {
      const body = await BS.api("/api/jobs?limit=10");
      const rows = (body.jobs || []).map(function (job) {
        const follow = BS.el("a", { href: "/add?job=" + job.id, text: "#" + job.id });
        return BS.el("tr", {}, [
          BS.el("td", {}, [follow]),
          BS.el("td", { text: job.kind }),
          BS.el("td", { text: job.state }),
          BS.el("td", { text: job.stage || "" }),
          BS.el("td", { text: Math.round(100 * (job.progress || 0)) + "%" }),
          BS.el("td", { text: job.counts && job.counts.figures !== undefined ? String(job.counts.figures) : "" }),
        ]);
      });
      table.tBodies[0].replaceChildren.apply(table.tBodies[0], rows);
      table.hidden = !rows.length;
      $("recent-status").textContent = rows.length ? "" : "No jobs yet.";
    } catch (e) {
      table.hidden = true;
      $("recent-status").textContent = "Jobs could not be listed: " + e.message;
    }
  }

  const wanted = new URLSearchParams(window.location.search).get("job");
  if (wanted && /^\d+$/.test(wanted)) follow(parseInt(wanted, 10));
  loadRecent();
})();
