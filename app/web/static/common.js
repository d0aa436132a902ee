/* BiomedSearch web UI: what every page shares (API calls, the API key, safe DOM building,
   query-term highlighting, the figure card). No framework, no build step, no inline script:
   the pages' content security policy forbids it. Text from the API is only ever put into the
   page with textContent / text nodes, never as HTML. */
"use strict";

(function () {
  const KEY_STORE = "biomedsearch.apiKey";

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function getKey() {
    try { return window.sessionStorage.getItem(KEY_STORE) || ""; } catch (e) { return ""; }
  }

  function setKey(value) {
    try {
      if (value) window.sessionStorage.setItem(KEY_STORE, value);
      else window.sessionStorage.removeItem(KEY_STORE);
    } catch (e) { /* storage disabled: the key lives only as long as the page */ }
  }

  function readsNeedKey() {
    return document.body.dataset.readsNeedKey === "true";
  }

  /* The message of an API error body ({"error": {"message": ...}}) or a generic one. */
  function errorMessage(status, body) {
    if (body && body.error && body.error.message) return body.error.message;
    if (status === 0) return "The service could not be reached.";
    return "The service answered with HTTP " + status + ".";
  }

  let keyPromptWaiters = [];

  /* Show the API-key form (reads need a key); resolves once a key was entered. */
  function askForKey(message) {
    const box = document.getElementById("key-prompt");
    const form = document.getElementById("key-prompt-form");
    const input = document.getElementById("key-prompt-input");
    if (!box || !form || !input) return Promise.reject(new ApiError(401, message || "An API key is needed."));
    document.getElementById("key-prompt-message").textContent =
      message || "This service needs an API key to read the catalogue.";
    box.hidden = false;
    input.focus();
    if (!form.dataset.bound) {
      form.dataset.bound = "1";
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        const value = input.value.trim();
        if (!value) return;
        setKey(value);
        box.hidden = true;
        const waiters = keyPromptWaiters;
        keyPromptWaiters = [];
        waiters.forEach(function (resolve) { resolve(); });
      });
    }
    return new Promise(function (resolve) { keyPromptWaiters.push(resolve); });
  }

  /* fetch() an API path and return its JSON body; throws ApiError with the service's message.
     Sends the stored API key; a 401 on a read asks for the key once and retries. */
  async function api(path, options) {
    const opts = Object.assign({ method: "GET" }, options || {});
    const headers = new Headers(opts.headers || {});
    const key = getKey();
    if (key && !headers.has("X-API-Key")) headers.set("X-API-Key", key);
    headers.set("Accept", "application/json");
    opts.headers = headers;
    let response;
    try {
      response = await fetch(path, opts);
    } catch (e) {
      if (e && e.name === "AbortError") throw e;
      throw new ApiError(0, "The service could not be reached.", null);
    }
    let body = null;
    const type = response.headers.get("content-type") || "";
    if (type.indexOf("application/json") !== -1) {
      try { body = await response.json(); } catch (e) { body = null; }
    }
    if (response.status === 401 && opts.method === "GET" && !opts.noKeyPrompt) {
      await askForKey(key ? "That API key was not accepted. Enter the service's API key."
                          : "This service needs an API key to read the catalogue.");
      return api(path, Object.assign({}, options, { noKeyPrompt: true }));
    }
    if (!response.ok) throw new ApiError(response.status, errorMessage(response.status, body), body);
    return body;
  }

  /* Build an element: el("a", {href: "/x", class: "c"}, ["text", otherNode]). Attribute values
     and text children are set as text, never parsed as HTML. */
  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(function ([name, value]) {
      if (value === null || value === undefined || value === false) return;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(name, value === true ? "" : String(value));
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) return;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  const STOP_WORDS = new Set(("a an and are as at be by for from in into is it of on or the to " +
    "with without than that this these those via vs was were which who whose").split(" "));

  /* The words of a query worth highlighting: lower-case, 2+ characters, no stop words, unique. */
  function queryTerms(query) {
    const out = [];
    (String(query || "").toLowerCase().match(/[\p{L}\p{N}][\p{L}\p{N}\-']*/gu) || []).forEach(function (word) {
      const term = word.replace(/^[\-']+|[\-']+$/g, "");
      if (term.length >= 2 && !STOP_WORDS.has(term) && out.indexOf(term) === -1) out.push(term);
    });
    return out;
  }

  function escapeRegExp(text) {
    return text.replace(/[.*+?^${}()|[\]\\\/]/g, "\\$&");
  }

  /* A regular expression matching any of `terms` at the start of a word (so "neuron" also marks
     "neurons"); null when there is nothing to mark. */
  function termPattern(terms) {
    const parts = (terms || []).filter(Boolean).map(function (t) { return escapeRegExp(String(t)); });
    if (!parts.length) return null;
    parts.sort(function (a, b) { return b.length - a.length; });
    return new RegExp("(?<![\\p{L}\\p{N}])(?:" + parts.join("|") + ")", "giu");
  }

  /* The part of `text` to show in a card: up to `max` characters around the first matched term. */
  function snippet(text, terms, max) {
    const limit = max || 220;
    const value = String(text || "");
    if (value.length <= limit) return value;
    let start = 0;
    const pattern = termPattern(terms);
    if (pattern) {
      const found = pattern.exec(value);
      if (found && found.index > limit / 3) start = Math.max(0, found.index - Math.floor(limit / 3));
    }
    if (start > 0) {
      const space = value.indexOf(" ", start);
      if (space !== -1 && space - start < 20) start = space + 1;
    }
    let end = Math.min(value.length, start + limit);
    if (end < value.length) {
      const space = value.lastIndexOf(" ", end);
      if (space > start + limit / 2) end = space;
    }
    return (start > 0 ? "… " : "") + value.slice(start, end) + (end < value.length ? " …" : "");
  }

  /* `text` as a DocumentFragment of text nodes with the matched `terms` in <mark> elements. The
     text is never parsed as HTML, so markup in a caption stays visible text. */
  function highlight(text, terms) {
    const fragment = document.createDocumentFragment();
    const value = String(text || "");
    const pattern = termPattern(terms);
    if (!pattern) {
      fragment.appendChild(document.createTextNode(value));
      return fragment;
    }
    let last = 0;
    let found;
    while ((found = pattern.exec(value)) !== null) {
      if (found[0].length === 0) { pattern.lastIndex += 1; continue; }
      // extend the mark to the end of the word ("neuron" -> "neurons")
      let end = found.index + found[0].length;
      while (end < value.length && /[\p{L}\p{N}]/u.test(value[end])) end += 1;
      if (found.index > last) fragment.appendChild(document.createTextNode(value.slice(last, found.index)));
      fragment.appendChild(el("mark", { text: value.slice(found.index, end) }));
      last = end;
      pattern.lastIndex = end;
    }
    if (last < value.length) fragment.appendChild(document.createTextNode(value.slice(last)));
    return fragment;
  }

  /* What a search result says about how it matched (hybrid ranking, the API's `match`):
     {signals: [...], terms: [...], fields: [...]}: the signals (lexical, image, caption) that found it,
     the query terms found in its text, and the text fields they were found in. */
  function matchInfo(hit) {
    const match = (hit && typeof hit.match === "object" && hit.match) || {};
    const signals = match.channels || match.signals || [];
    const terms = match.terms || [];
    const where = (match.where && typeof match.where === "object") ? match.where : {};
    return {
      signals: Array.isArray(signals) ? signals.map(String) : Object.keys(signals),
      terms: Array.isArray(terms) ? terms.map(String) : [],
      fields: Object.keys(where).filter(function (f) { return Array.isArray(where[f]) && where[f].length; }),
    };
  }

  const SIGNAL_NAMES = { lexical: "words", image: "image", caption: "caption meaning" };

  function formatScore(score) {
    return typeof score === "number" && isFinite(score) ? score.toFixed(3) : "";
  }

  /* The thumbnail (or a placeholder for caption-only figures) linking to the figure page. */
  function thumbnail(fig) {
    const label = fig.label || "Figure";
    if (fig.has_image && fig.thumbnail_url) {
      const img = el("img", {
        src: fig.thumbnail_url,
        alt: label + ": " + snippet(fig.caption || "", [], 120),
        loading: "lazy",
        decoding: "async",
      });
      img.addEventListener("error", function () {
        img.replaceWith(el("span", { class: "thumb-missing", text: "Image unavailable" }));
      }, { once: true });
      return img;
    }
    return el("span", { class: "thumb-missing", text: "No image (caption only)" });
  }

  /* One result card (<li>): thumbnail, label, highlighted caption snippet, article, year, score.
     options: terms (to highlight), captionFirst (image -> text results), showScore. */
  function figureCard(fig, options) {
    const opts = options || {};
    const info = matchInfo(fig);
    const terms = (opts.terms || []).concat(info.terms);
    const article = fig.article || {};
    const href = "/figures/" + encodeURIComponent(fig.id);
    const caption = [fig.caption_title, fig.caption].filter(Boolean).join(" ");
    const captionText = fig.caption && fig.caption_title && fig.caption.indexOf(fig.caption_title) === 0
      ? fig.caption : caption;
    const snippetNode = el("p", { class: "snippet" });
    snippetNode.appendChild(highlight(snippet(captionText, terms, opts.captionFirst ? 420 : 200), terms));

    const meta = el("p", { class: "card-article" }, [
      article.title ? el("span", { class: "article-title", text: article.title }) : null,
      el("span", { class: "article-source" }, [
        [article.journal, article.year].filter(Boolean).join(" · ") || "",
      ]),
    ]);
    const facts = [];
    if (fig.rank) facts.push("#" + fig.rank);
    if (opts.showScore !== false && fig.score !== undefined) facts.push("score " + formatScore(fig.score));
    const badges = info.signals.length
      ? el("ul", { class: "signals", "aria-label": "Matched by" },
          info.signals.map(function (s) {
            const name = SIGNAL_NAMES[s] || s;
            const text = s === "lexical" && info.fields.length ? name + " in " + info.fields.join(", ") : name;
            return el("li", { text: text, dataset: { signal: s } });
          }))
      : null;
    const link = el("a", { href: href, class: "card-link" }, [
      el("span", { class: "thumb" }, [thumbnail(fig)]),
      el("span", { class: "card-label", text: fig.label || "Figure" }),
    ]);
    const kind = fig.figure_type
      ? el("p", { class: "card-type", dataset: { type: fig.figure_type.value } },
          [fig.figure_type.label + (fig.multipanel ? " · multi-panel" : "")])
      : null;
    return el("li", { class: "card" + (opts.captionFirst ? " caption-card" : ""), dataset: { figureId: fig.id } }, [
      link,
      kind,
      snippetNode,
      meta,
      facts.length ? el("p", { class: "score", text: facts.join(" · ") }) : null,
      badges,
    ]);
  }

  /* Fill a <dl> with an article's metadata and its PMC / DOI link. */
  function articleMeta(dl, article) {
    dl.replaceChildren();
    function row(term, value) {
      if (value === null || value === undefined || value === "") return;
      dl.appendChild(el("dt", { text: term }));
      dl.appendChild(el("dd", {}, [value]));
    }
    row("Title", article.title || "(untitled)");
    row("Journal", article.journal);
    row("Year", article.year ? String(article.year) : "");
    row("License", article.license);
    if (article.doi) row("DOI", el("a", { href: "https://doi.org/" + article.doi, rel: "noopener", text: article.doi }));
    if (article.pmcid) row("PMCID", article.pmcid);
    if (article.url) {
      const where = article.pmcid ? "Read the article at PubMed Central" : "Read the article";
      row("Full text", el("a", { href: article.url, rel: "noopener", class: "external", text: where }));
    }
  }

  /* The figure's type and panels as rows of a <dl>: "Type: CT (91 % confident)", "Panels: ...". */
  function figureTypeMeta(dl, fig) {
    dl.replaceChildren();
    const kind = fig.figure_type;
    dl.appendChild(el("dt", { text: "Type" }));
    dl.appendChild(el("dd", { id: "figure-type", dataset: { type: kind ? kind.value : "" } },
      [kind ? kind.label + " (" + Math.round(kind.confidence * 100) + " % confident)" : "not labelled yet"]));
    if (fig.multipanel !== null && fig.multipanel !== undefined) {
      const where = { caption: "its caption names panels", image: "gutters split its image",
                      both: "its caption names panels and gutters split its image" }[fig.multipanel_evidence];
      dl.appendChild(el("dt", { text: "Panels" }));
      dl.appendChild(el("dd", { id: "figure-panels" },
        [fig.multipanel ? "multi-panel" + (where ? " (" + where + ")" : "") : "single panel"]));
    }
  }

  function showError(node, message) {
    if (!node) return;
    node.textContent = message;
    node.hidden = !message;
  }

  window.BS = {
    ApiError: ApiError,
    api: api,
    el: el,
    getKey: getKey,
    setKey: setKey,
    readsNeedKey: readsNeedKey,
    queryTerms: queryTerms,
    highlight: highlight,
    snippet: snippet,
    matchInfo: matchInfo,
    figureCard: figureCard,
    articleMeta: articleMeta,
    figureTypeMeta: figureTypeMeta,
    showError: showError,
    errorMessage: errorMessage,
  };
})();
