"""What every stage shares, beneath the stages: ``worker`` (the per-chunk loop a chunk task runs, per video on Dask
or here), ``dask`` (the cluster and ``run_chunks``), ``keys`` and ``upgrade`` (chunk keys, record stamps, the re-keying
of workspaces made before behaviour versions), ``records`` (the stage's summary, the manifest rebuild),
``progress`` and ``artifacts`` (what the UI shows while and after a stage runs), ``runs`` (a stage flow's wrapper: its
lock, stored config, run name), ``errors`` (which faults are retried), ``codeprint``, ``pins`` and ``environment``
(behaviour versions, code fingerprints, package versions), ``dask_worker`` (a worker's set-up).
"""
