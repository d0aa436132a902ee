/* The article page: GET /api/articles/{id}, its metadata and its figures in document order. */
"use strict";

(function () {
  const $ = function (id) { return document.getElementById(id); };
  const root = $("article");
  const articleId = root.dataset.articleId;

  async function load() {
    try {
      const art = await BS.api("/api/articles/" + articleId);
      document.title = (art.title || "Article " + articleId) + " · BiomedSearch";
      $("article-title").textContent = art.title || "Article " + articleId;
      BS.articleMeta($("article-meta"), art);
      const figures = art.figures || [];
      $("figures").replaceChildren.apply($("figures"), figures.map(function (fig) {
        fig.article = fig.article || art;
        return BS.figureCard(fig, { showScore: false });
      }));
      $("figures-status").textContent = figures.length
        ? figures.length + " figure" + (figures.length === 1 ? "" : "s") + "."
        : "This article has no figures.";
    } catch (e) {
      $("article-title").textContent = e.status === 404 ? "Article " + articleId + " was not found" : "Article " + articleId;
      BS.showError($("error"), e.status === 404 ? "It may have been removed, or the link is wrong." : e.message);
    } finally {
      root.removeAttribute("aria-busy");
    }
  }

  load();
})();
