"""The six services' names, importable without loading the roles (the CLI builds its
parser from them; loading the roles pulls in torch). ``tsfl.pipeline.roles.ROLES`` maps
exactly these names to their classes (tests/test_cli.py checks it)."""

SERVICE_NAMES: tuple[str, ...] = ("coordinator", "selector", "privacy", "byzantine",
                                  "aggregator", "he")
