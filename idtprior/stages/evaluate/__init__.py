"""The evaluate stage: its plan and flow (``flow``) and the chunk task that runs one protocol (``task``). A package, not
a module: the two together are about 500 lines."""
