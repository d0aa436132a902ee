"""The REST API: dependencies (``deps``) and one router per resource (``routes``)."""
