"""The store: the database (SQLite or PostgreSQL) and its migrations, tables, stored circuits and
artifacts, API tokens."""
