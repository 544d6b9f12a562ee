"""idtprior: unsupervised video representations from dense trajectory clusters (Tokmakov, Hebert, Schmid 2020)."""

import time as _time

from idtprior.sources import source_hash as _source_hash

SOURCES = _source_hash()
"""The package's files as this process first imported them (``idtprior.sources``)."""
SOURCES_AT = _time.time()
