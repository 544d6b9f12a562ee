"""idtprior: unsupervised video representations from dense trajectory clusters (Tokmakov, Hebert, Schmid 2020).

The map of the package, its layers and what each module does: ``docs/architecture.md``."""

from idtprior.sources import SOURCES, SOURCES_AT

__all__ = ["SOURCES", "SOURCES_AT"]
