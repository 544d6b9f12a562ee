"""The training stages (``pretrain_ir``, ``pretrain_la``, ``tune_joint``, ``pretrain_la_bank``, ``supervised``): their
plans and flows (``flow``), the chunk task that trains on a worker (``task``), and the same task as a SLURM batch job
(``job``). A package, not a module: the three together are over 800 lines."""
