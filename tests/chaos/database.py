"""The verdict log the chaos gates share: SQLite (one gate), a throwaway
PostgreSQL cluster the script starts and deletes, or a PostgreSQL URL given."""

from __future__ import annotations

from peers import PostgresCluster


class ChaosDatabase:
    """`kind`: "sqlite" (each gate's default file; one gate only), "postgresql"
    (a throwaway cluster started here, as a child, unless `url` is given)."""

    def __init__(self, kind: str, url: str | None = None):
        if kind not in ("sqlite", "postgresql"):
            raise ValueError(f"--database must be sqlite or postgresql, not {kind!r}")
        self.kind, self.url, self.cluster = kind, url, None

    def start(self) -> "ChaosDatabase":
        if self.kind == "postgresql" and self.url is None:
            self.cluster = PostgresCluster.create().start()
            self.url = self.cluster.url
        return self

    def settings(self) -> dict:
        """The gates' `database_url` setting (none for SQLite: each gate's own file)."""
        return {} if self.kind == "sqlite" else {"database_url": self.url}

    def describe(self) -> str:
        if self.kind == "sqlite":
            return "SQLite"
        return f"PostgreSQL on port {self.cluster.port} (throwaway)" if self.cluster else "PostgreSQL (URL given)"

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.destroy()
            self.cluster = None
