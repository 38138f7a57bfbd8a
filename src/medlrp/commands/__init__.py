"""One module per CLI command; each defines ``register(app)``."""

from medlrp.commands import batch, demo, evaluate, explain, phantom, train

COMMAND_MODULES = [demo, explain, evaluate, train, phantom, batch]
