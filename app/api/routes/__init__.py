"""One router per resource: search, figures, articles, jobs, health."""
