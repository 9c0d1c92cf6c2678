"""Attack: never meant to run; its manifest is the attack."""


class Huge:
    def __init__(self, nats_client, config=None):
        self.nats = nats_client

    async def initialize(self):
        pass

    async def shutdown(self):
        pass
