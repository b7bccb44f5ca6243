"""The store tests: StoreTests on every database backend, search, migrations, SQLite specifics, the writer."""
