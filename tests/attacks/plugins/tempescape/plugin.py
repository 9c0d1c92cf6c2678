"""Attack: the harm is in migrations/001_spill.sql; the code never gets to run."""


class TempEscape:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        pass

    async def shutdown(self):
        pass
