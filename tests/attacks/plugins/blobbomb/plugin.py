"""Attack: the harm is in migrations/001_bomb.sql; the code never gets to run."""


class BlobBomb:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        pass

    async def shutdown(self):
        pass
