"""Storage behind one narrow interface; SQLite is the embedded backend."""
