"""The dask cluster of a search fan-out or a profile transform: the one place it is set up.

``DaskCluster(scheduler, workers)`` connects to an existing scheduler (``tcp://HOST:PORT``, for
many machines: their workers need tda installed and the index path readable), or starts a
LocalCluster of ``workers`` processes on this machine (one thread each, dashboard on loopback
only, dask's own logging quieted). A local worker that dies is restarted by its nanny (with a
new address); the workers die with the process that started them, even when it is killed.
Worker processes are spawned, which re-imports the caller's ``__main__``: a script that
starts one needs an ``if __name__ == "__main__"`` guard (searching in process, the default
for an index one process holds, starts none). It is a context manager and ``close()`` is
idempotent: the cluster goes away even when a task raises.
"""
from __future__ import annotations

import logging

from tda.errors import ConfigError


class DaskCluster:
    """A dask ``client`` on the given scheduler, or on a LocalCluster it owns."""

    def __init__(self, scheduler: str | None = None, workers: int = 2):
        import dask
        from dask.distributed import Client, LocalCluster

        dask.config.set({"distributed.logging.distributed": "error",
                         "distributed.admin.system-monitor.gil.enabled": False})
        logging.getLogger("distributed").setLevel(logging.ERROR)
        self.cluster = None
        if scheduler:
            self.client = Client(scheduler, timeout="30s")
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address="127.0.0.1:0",
                                        silence_logs=logging.ERROR)
            try:
                self.client = Client(self.cluster)
                self.client.wait_for_workers(workers, timeout=300)
            except BaseException:
                self.cluster.close()
                raise
        if not self.workers:
            self.close()
            raise ConfigError(f"the dask cluster at {scheduler} has no workers")

    @property
    def workers(self) -> list[str]:
        """Addresses of the workers alive now, sorted."""
        return sorted(self.client.scheduler_info()["workers"])

    def close(self) -> None:
        """Close the client, and the LocalCluster when this object started it."""
        client, self.client = getattr(self, "client", None), None
        cluster, self.cluster = self.cluster, None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def __enter__(self) -> "DaskCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
