"""idtprior.stages.pretrain."""
