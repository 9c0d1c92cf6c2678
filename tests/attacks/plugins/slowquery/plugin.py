"""Attack: 48 concurrent worst-case LIKE searches (the longest pattern storage
takes, over rows of 300,000 characters), started in the background so the
command answers at once."""
import asyncio
import json

SEARCH = {"table": "notes", "filters": {"body": {"$like": "%" + "a" * 98 + "b"}}}


class SlowQuery:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client
        self.tasks = []

    async def initialize(self):
        await self.nats.subscribe("rosey.command.slowquery.go", cb=self._go)

    async def shutdown(self):
        for task in self.tasks:
            task.cancel()

    async def _ask(self, subject, body):
        try:
            reply = await self.nats.request(subject, json.dumps(body).encode(), timeout=300)
            return json.loads(reply.data)
        except Exception as exc:  # noqa: BLE001
            return {"error": {"code": type(exc).__name__}}

    async def _go(self, msg):
        schema = {"table": "notes", "schema": {"fields": [{"name": "body", "type": "text"}]}}
        registered = await self._ask("rosey.db.row.slowquery.schema.register", schema)
        self.tasks = [asyncio.ensure_future(self._ask("rosey.db.row.slowquery.search", SEARCH)) for _ in range(48)]
        await msg.respond(json.dumps({"success": True, "result": {"registered": registered.get("success"),
                                                                   "searches": len(self.tasks)}}).encode())
