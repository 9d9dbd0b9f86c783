"""Session storage: the ``SessionStore`` seam (``store``), its in-memory and SQLite stores and
group commit."""
