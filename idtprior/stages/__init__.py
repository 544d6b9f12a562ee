"""The stages of the pipeline, one module each: a stage's plan (chunk -> key and task arguments, built without
running anything), its chunk task (what runs on a worker and commits a record) with its typed job and ``BEHAVIOUR``
version, its flow (plan, run the chunks on Dask, report), its readers (what later stages read of its records) and
its pictures. A change to a stage is a change to its module.

In pipeline order, each module may import the ones before it (a stage reads its upstream stages' records), never one
after: ``ingest``, ``decode``, ``detect``, ``idt``, ``fit_codebook``, ``encode``, ``cluster``, the training stages
(``pretrain``: a package of ``flow``, ``task`` and ``job``, the SLURM batch job), ``evaluate`` (``flow`` and ``task``).
``common`` and ``pictures`` are what they share; ``registry`` (the ordered registry the pipeline and the UI's
deployments read) sits above them all. Beneath them: ``idtprior.runtime``.
"""
